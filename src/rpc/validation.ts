// Request validation shared by the kvpark.v1 handlers: every check of a client's input, with errors
// that name the offending field and the fix.
import { PinKind, type Prompt } from "../../gen/kvpark/v1/common_pb.js";
import type { SamplingParams } from "../../gen/kvpark/v1/inference_pb.js";
import type { BlockSelector } from "../../gen/kvpark/v1/kvblocks_pb.js";
import type { Config } from "../config.js";
import { responseFormatConstraint } from "../constraint-spec.js";
import type { BlockSelection, ModelInfo, PinHint, SamplingSettings } from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import { checkChat, type CheckedChat } from "./chat.js";
import type { PromptEncoder } from "./deps.js";
import { codePoints } from "./quote.js";

export { codePoints, ECHO_CHARS_MAX, quoted } from "./quote.js";

/** Limits on what a prompt may hold before it is tokenized. */
export const PROMPT_TEXT_CHARS_MAX = 8 * 1024 * 1024;

/**
 * The most characters (UTF-16 code units: a string's length, known without reading the text) one
 * token is taken to cover when text is measured before it is tokenized. Text longer than the tokens
 * left in the model's context times this cannot fit, and is refused unread: tokenizing it would only
 * cost seconds of CPU before the same refusal. Tokenizers of 32k to 150k tokens cover about 4
 * characters of English per token, fewer of source code and other scripts (a CJK character or an
 * emoji is a token or more), and the generated test models' small vocabularies under 2; 16 is four
 * times the densest natural text, so a prompt that would fit is not refused by the estimate. Only text
 * made of long runs of one character (a vocabulary may hold a token of 16 spaces or more) packs more
 * into a token; such a prompt is refused, with the limit named. A larger factor refuses fewer of those
 * and spends more tokenizer time (on a worker thread) on prompts that cannot fit.
 */
export const TEXT_CHARS_PER_TOKEN_MAX = 16;

/** A prompt turned into token ids; a chat prompt also gives its checked form and rendered text. */
export interface PromptInput {
  ids: number[];
  chat?: CheckedChat;
  rendered?: string;
}

/** How a prompt is read: whether it continues a handle's context, and how many tokens that holds. */
export interface PromptOptions {
  /** A chat continues the conversation of a handle's context. */
  continuation?: boolean;
  /** Tokens of the context the prompt is appended to; they leave less room for its text. */
  usedTokens?: number;
}

/**
 * Refuses text of `chars` characters that cannot fit in what is left of the model's context after
 * `usedTokens`, before it is tokenized (see TEXT_CHARS_PER_TOKEN_MAX), with the code and status of a
 * context that is too long (OUT_OF_RANGE).
 */
export function checkTextSize(chars: number, usedTokens: number, info: ModelInfo, field: string): void {
  const room = Math.max(0, info.contextTokens - usedTokens);
  const limit = room * TEXT_CHARS_PER_TOKEN_MAX;
  if (chars <= limit) return;
  const context =
    usedTokens > 0
      ? `the ${room} tokens left of the model's context of ${info.contextTokens} tokens`
      : `the model's context of ${info.contextTokens} tokens`;
  throw new KvparkError(
    "OUT_OF_RANGE",
    `${field}: ${chars} ${chars === 1 ? "character" : "characters"} cannot fit in ${context}; at most ${limit} characters (${TEXT_CHARS_PER_TOKEN_MAX} per token) are tokenized`,
  );
}

/** Turns a Prompt message into token ids, with errors that name the offending field. */
export async function promptTokens(
  prompt: Prompt | undefined,
  field: string,
  encoder: PromptEncoder,
  info: ModelInfo,
  options: PromptOptions = {},
): Promise<number[]> {
  return (await promptInput(prompt, field, encoder, info, options)).ids;
}

/**
 * Turns a Prompt message into token ids, keeping a chat prompt's checked messages and tools and its
 * rendered text. Text is measured against the model's context before it is tokenized.
 */
export async function promptInput(
  prompt: Prompt | undefined,
  field: string,
  encoder: PromptEncoder,
  info: ModelInfo,
  options: PromptOptions = {},
): Promise<PromptInput> {
  const usedTokens = options.usedTokens ?? 0;
  const kind = prompt?.kind;
  if (!kind || kind.case === undefined) throw invalidField(field, "required: set text, chat or tokens");
  let ids: number[];
  let chat: CheckedChat | undefined;
  let rendered: string | undefined;
  switch (kind.case) {
    case "text":
      if (kind.value.length === 0) throw invalidField(`${field}.text`, "must not be empty");
      if (kind.value.length > PROMPT_TEXT_CHARS_MAX)
        throw invalidField(`${field}.text`, `longer than ${PROMPT_TEXT_CHARS_MAX} characters`);
      checkTextSize(kind.value.length, usedTokens, info, `${field}.text`);
      ids = await encoder.encode(kind.value, true);
      break;
    case "chat": {
      chat = checkChat(kind.value, `${field}.chat`);
      checkTextSize(chat.chars, usedTokens, info, `${field}.chat`);
      const continuation = options.continuation ?? false;
      ({ ids, prompt: rendered } = await encoder.renderChat(chat, `${field}.chat`, continuation));
      break;
    }
    case "tokens": {
      ids = kind.value.ids;
      if (ids.length === 0) throw invalidField(`${field}.tokens.ids`, "must not be empty");
      const bad = ids.findIndex((id) => id >= info.vocabSize);
      if (bad >= 0)
        throw invalidField(
          `${field}.tokens.ids[${bad}]`,
          `token id ${ids[bad]} is outside the vocabulary (size ${info.vocabSize})`,
        );
      break;
    }
  }
  if (ids.length === 0) throw invalidField(field, "tokenizes to no tokens");
  return { ids, chat, rendered };
}

/** Refuses a context that cannot fit the model together with at least `reserve` generated tokens. */
export function checkContext(tokens: number, reserve: number, info: ModelInfo, field: string): void {
  if (tokens + reserve > info.contextTokens) {
    throw new KvparkError(
      "OUT_OF_RANGE",
      `${field}: ${tokens} tokens plus ${reserve} to generate exceed the model's context of ${info.contextTokens} tokens`,
    );
  }
}

const STOP_STRINGS_MAX = 16;
const STOP_STRING_CHARS_MAX = 256;

/** Validates sampling parameters and fills defaults. */
export function samplingSettings(p: SamplingParams | undefined, config: Config): SamplingSettings {
  const maxTokens = p?.maxTokens ?? config.maxTokensDefault;
  if (maxTokens < 1 || maxTokens > config.maxTokensLimit) {
    throw invalidField(
      "sampling.max_tokens",
      `must be between 1 and ${config.maxTokensLimit}, got ${maxTokens}`,
    );
  }
  const temperature = p?.temperature ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 10) {
    throw invalidField("sampling.temperature", `must be between 0 and 10, got ${temperature}`);
  }
  const topP = p?.topP ?? 1;
  if (!Number.isFinite(topP) || topP <= 0 || topP > 1)
    throw invalidField("sampling.top_p", `must be in (0, 1], got ${topP}`);
  const topK = p?.topK ?? 0;
  if (topK < 0) throw invalidField("sampling.top_k", `must not be negative, got ${topK}`);
  const stop = p?.stop ?? [];
  if (stop.length > STOP_STRINGS_MAX)
    throw invalidField("sampling.stop", `at most ${STOP_STRINGS_MAX} stop strings`);
  stop.forEach((s, i) => {
    const chars = codePoints(s, STOP_STRING_CHARS_MAX + 1);
    if (chars === 0 || chars > STOP_STRING_CHARS_MAX) {
      throw invalidField(`sampling.stop[${i}]`, `must have 1 to ${STOP_STRING_CHARS_MAX} characters`);
    }
  });
  // The seed is kept below 2^53 so it crosses the IPC boundary as an exact number.
  const seed = p?.seed !== undefined ? Number(p.seed % (1n << 53n)) : Math.floor(Math.random() * 2 ** 32);
  const constraint = responseFormatConstraint(p?.responseFormat);
  return { maxTokens, temperature, topP, topK, seed, stop, ...(constraint && { constraint }) };
}

/** A pin as a request asks for it, validated; `fields` name the request's kind and TTL fields. */
export function pinHint(
  kind: PinKind,
  ttlSeconds: number,
  fields: { kind: string; ttl: string },
  config: Config,
): PinHint {
  if (kind === PinKind.HARD) {
    if (ttlSeconds) throw invalidField(fields.ttl, "a hard pin has no time to live");
    return { kind: "hard" };
  }
  if (kind === PinKind.SOFT) {
    if (ttlSeconds > config.softPinTtlMaxSeconds) {
      throw invalidField(
        fields.ttl,
        `${ttlSeconds} s exceeds the longest soft pin allowed, ${config.softPinTtlMaxSeconds} s (--soft-pin-ttl-max-seconds)`,
      );
    }
    return { kind: "soft", ttlMs: (ttlSeconds || config.softPinTtlSeconds) * 1000 };
  }
  const problem =
    kind === PinKind.UNSPECIFIED ? "required: PIN_KIND_SOFT or PIN_KIND_HARD" : `unknown pin kind ${kind}`;
  throw invalidField(fields.kind, problem);
}

const KEY_BYTES = 32;
const KEYS_MAX = 4096;

/** Checks a list of block keys: 1 to KEYS_MAX keys of KEY_BYTES bytes each. */
export function checkKeys(keys: readonly Uint8Array[], field: string): void {
  if (keys.length === 0) throw invalidField(field, "must hold at least one key");
  if (keys.length > KEYS_MAX)
    throw invalidField(field, `at most ${KEYS_MAX} keys per call, got ${keys.length}`);
  const bad = keys.findIndex((k) => k.length !== KEY_BYTES);
  if (bad >= 0)
    throw invalidField(`${field}[${bad}]`, `a block key has ${KEY_BYTES} bytes, got ${keys[bad].length}`);
}

/** Blocks chosen by keys or by a prompt; `model` is asked for only when a prompt must be tokenized. */
export async function blockSelection(
  sel: BlockSelector | undefined,
  field: string,
  model: () => { info: ModelInfo; encoder: PromptEncoder },
): Promise<BlockSelection> {
  const target = sel?.target;
  if (!target || target.case === undefined) throw invalidField(field, "required: set keys or prompt");
  if (target.case === "keys") {
    checkKeys(target.value.keys, `${field}.keys.keys`);
    return { keys: target.value.keys.map((k) => Buffer.from(k)) };
  }
  const { info, encoder } = model();
  return { tokens: await promptTokens(target.value, `${field}.prompt`, encoder, info) };
}
