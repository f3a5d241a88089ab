// Request validation shared by the kvpark.v1 handlers: every check of a client's input, with errors
// that name the offending field and the fix.
import { PinKind, type Prompt } from "../../gen/kvpark/v1/common_pb.js";
import type { SamplingParams } from "../../gen/kvpark/v1/inference_pb.js";
import type { BlockSelector } from "../../gen/kvpark/v1/kvblocks_pb.js";
import type { Config } from "../config.js";
import { responseFormatConstraint } from "../constraint-spec.js";
import type { BlockSelection, ModelInfo, PinHint, SamplingSettings } from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import { checkChat, renderChat, type CheckedChat } from "./chat.js";
import { codePoints } from "./quote.js";

export { codePoints, ECHO_CHARS_MAX, quoted } from "./quote.js";

/** Limits on what a prompt may hold before it is tokenized. */
export const PROMPT_TEXT_CHARS_MAX = 8 * 1024 * 1024;

/** A prompt turned into token ids; a chat prompt also gives its checked form and rendered text. */
export interface PromptInput {
  ids: number[];
  chat?: CheckedChat;
  rendered?: string;
}

/** Turns a Prompt message into token ids, with errors that name the offending field. */
export function promptTokens(
  prompt: Prompt | undefined,
  field: string,
  tokenizer: ModelTokenizer,
  info: ModelInfo,
  options: { continuation?: boolean } = {},
): number[] {
  return promptInput(prompt, field, tokenizer, info, options).ids;
}

/**
 * Turns a Prompt message into token ids, keeping a chat prompt's checked messages and tools and its
 * rendered text. With `continuation`, a chat continues the conversation of a handle's context.
 */
export function promptInput(
  prompt: Prompt | undefined,
  field: string,
  tokenizer: ModelTokenizer,
  info: ModelInfo,
  options: { continuation?: boolean } = {},
): PromptInput {
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
      ids = tokenizer.encode(kind.value, { addSpecialTokens: true });
      break;
    case "chat": {
      chat = checkChat(kind.value, `${field}.chat`);
      ({ ids, prompt: rendered } = renderChat(chat, tokenizer, `${field}.chat`, options.continuation));
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
export function blockSelection(
  sel: BlockSelector | undefined,
  field: string,
  model: () => { info: ModelInfo; tokenizer: ModelTokenizer },
): BlockSelection {
  const target = sel?.target;
  if (!target || target.case === undefined) throw invalidField(field, "required: set keys or prompt");
  if (target.case === "keys") {
    checkKeys(target.value.keys, `${field}.keys.keys`);
    return { keys: target.value.keys.map((k) => Buffer.from(k)) };
  }
  const { info, tokenizer } = model();
  return { tokens: promptTokens(target.value, `${field}.prompt`, tokenizer, info) };
}
