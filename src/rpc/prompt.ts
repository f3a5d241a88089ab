import type { Prompt } from "../../gen/kvpark/v1/common_pb.js";
import { invalidField, KvparkError } from "../errors.js";
import type { ModelInfo } from "../engine/protocol.js";
import type { ModelTokenizer } from "../model/tokenizer.js";

/** Limits on what a prompt may hold before it is tokenized. */
export const PROMPT_TEXT_CHARS_MAX = 8 * 1024 * 1024;
export const CHAT_MESSAGES_MAX = 10000;

/** Turns a Prompt message into token ids, with errors that name the offending field. */
export function promptTokens(
  prompt: Prompt | undefined,
  field: string,
  tokenizer: ModelTokenizer,
  info: ModelInfo,
): number[] {
  const kind = prompt?.kind;
  if (!kind || kind.case === undefined) throw invalidField(field, "required: set text, chat or tokens");
  let ids: number[];
  switch (kind.case) {
    case "text":
      if (kind.value.length === 0) throw invalidField(`${field}.text`, "must not be empty");
      if (kind.value.length > PROMPT_TEXT_CHARS_MAX)
        throw invalidField(`${field}.text`, `longer than ${PROMPT_TEXT_CHARS_MAX} characters`);
      ids = tokenizer.encode(kind.value, { addSpecialTokens: true });
      break;
    case "chat": {
      const { messages } = kind.value;
      if (messages.length === 0)
        throw invalidField(`${field}.chat.messages`, "must hold at least one message");
      if (messages.length > CHAT_MESSAGES_MAX)
        throw invalidField(`${field}.chat.messages`, `more than ${CHAT_MESSAGES_MAX} messages`);
      messages.forEach((m, i) => {
        if (!m.role) throw invalidField(`${field}.chat.messages[${i}].role`, "must not be empty");
      });
      try {
        ids = tokenizer.renderAndEncode(
          messages.map((m) => ({ role: m.role, content: m.content })),
          { addGenerationPrompt: kind.value.addGenerationPrompt ?? true },
        ).ids;
      } catch (err) {
        throw invalidField(`${field}.chat`, `the model's chat template failed: ${(err as Error).message}`);
      }
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
  return ids;
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
