import { create } from "@bufbuild/protobuf";
import { PromptSchema, type Prompt } from "../../gen/kvpark/v1/common_pb";
import type { ModelInfo } from "../../src/engine-ipc";
import { KvparkError } from "../../src/errors";
import type { CheckedChat } from "../../src/rpc/chat";
import type { PromptEncoder } from "../../src/rpc/deps";
import {
  checkTextSize,
  promptInput,
  PROMPT_TEXT_CHARS_MAX,
  TEXT_CHARS_PER_TOKEN_MAX,
} from "../../src/rpc/validation";

const info: ModelInfo = {
  name: "tiny",
  dir: "/nowhere",
  fingerprint: "0".repeat(64),
  modelType: "qwen2",
  vocabSize: 512,
  contextTokens: 8192,
  numLayers: 2,
  attentionLayers: 2,
  kvHeads: 2,
  headDim: 16,
  recurrentStateBytes: 0,
  weightBytes: 0,
  allocator: "system",
};

/** An encoder that records what it was asked to tokenize and answers one id per character. */
function recordingEncoder() {
  const calls: string[] = [];
  const encoder: PromptEncoder = {
    encode: async (text, addSpecialTokens) => {
      calls.push(`encode ${text.length} ${addSpecialTokens}`);
      return Array.from(text, () => 1);
    },
    renderChat: async (chat: CheckedChat, field, continuation) => {
      calls.push(`chat ${chat.chars} ${field} ${continuation}`);
      return { prompt: "rendered", ids: [1, 2, 3] };
    },
  };
  return { calls, encoder };
}

function refusal(fn: () => void): KvparkError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KvparkError);
    return err as KvparkError;
  }
  throw new Error("accepted");
}

const textPrompt = (text: string): Prompt => create(PromptSchema, { kind: { case: "text", value: text } });

describe("checkTextSize", () => {
  it("takes text up to the context's tokens times TEXT_CHARS_PER_TOKEN_MAX characters", () => {
    expect(TEXT_CHARS_PER_TOKEN_MAX).toBe(16);
    expect(() => checkTextSize(131072, 0, info, "prompt.text")).not.toThrow();
    const err = refusal(() => checkTextSize(131073, 0, info, "prompt.text"));
    expect([err.code, err.message]).toEqual([
      "OUT_OF_RANGE",
      "prompt.text: 131073 characters cannot fit in the model's context of 8192 tokens; at most 131072 characters (16 per token) are tokenized",
    ]);
  });

  it("counts only the room a context already holding tokens leaves", () => {
    expect(() => checkTextSize(3072, 8000, info, "requests[2].text")).not.toThrow();
    const err = refusal(() => checkTextSize(3073, 8000, info, "requests[2].text"));
    expect([err.code, err.message]).toEqual([
      "OUT_OF_RANGE",
      "requests[2].text: 3073 characters cannot fit in the 192 tokens left of the model's context of 8192 tokens; at most 3072 characters (16 per token) are tokenized",
    ]);
    const full = refusal(() => checkTextSize(1, 9000, info, "prompt.text"));
    expect(full.message).toBe(
      "prompt.text: 1 character cannot fit in the 0 tokens left of the model's context of 8192 tokens; at most 0 characters (16 per token) are tokenized",
    );
  });

  it("keeps the characters grpc-js clients see percent-encoded out of the problem it states", () => {
    const err = refusal(() => checkTextSize(200000, 100, info, "prompt.chat"));
    const problem = err.message.slice("prompt.chat: ".length);
    expect(problem).not.toMatch(/[/:,=?&+#$@]/);
  });
});

describe("promptInput refuses text too long for the context before tokenizing it", () => {
  it("a text prompt", async () => {
    const { calls, encoder } = recordingEncoder();
    const huge = "word ".repeat(PROMPT_TEXT_CHARS_MAX / 5);
    await expect(promptInput(textPrompt(huge), "prompt", encoder, info)).rejects.toMatchObject({
      code: "OUT_OF_RANGE",
      message: `prompt.text: ${huge.length} characters cannot fit in the model's context of 8192 tokens; at most 131072 characters (16 per token) are tokenized`,
    });
    expect(calls).toEqual([]);
    const fits = await promptInput(textPrompt("x".repeat(131072)), "prompt", encoder, info);
    expect(fits.ids.length).toBe(131072);
    expect(calls).toEqual(["encode 131072 true"]);
  });

  it("a text prompt after a handle's context", async () => {
    const { calls, encoder } = recordingEncoder();
    const options = { continuation: true, usedTokens: 8100 };
    await expect(
      promptInput(textPrompt("y".repeat(92 * 16 + 1)), "prompt", encoder, info, options),
    ).rejects.toMatchObject({
      code: "OUT_OF_RANGE",
      message:
        "prompt.text: 1473 characters cannot fit in the 92 tokens left of the model's context of 8192 tokens; at most 1472 characters (16 per token) are tokenized",
    });
    expect(calls).toEqual([]);
  });

  it("a chat, counting every message and tool", async () => {
    const { calls, encoder } = recordingEncoder();
    const chat = (content: string) =>
      create(PromptSchema, {
        kind: {
          case: "chat",
          value: {
            messages: [
              { role: "system", content: "s".repeat(65536) },
              { role: "user", content },
            ],
            tools: [{ name: "f", description: "d".repeat(1000), parametersJson: "{}" }],
          },
        },
      });
    // system: 6 + 65536, user: 4 + content, tool: 1 + 1000 + 2 characters.
    const room = 131072 - (6 + 65536) - 4 - 1003;
    await expect(promptInput(chat("u".repeat(room + 1)), "prompt", encoder, info)).rejects.toMatchObject({
      code: "OUT_OF_RANGE",
      message:
        "prompt.chat: 131073 characters cannot fit in the model's context of 8192 tokens; at most 131072 characters (16 per token) are tokenized",
    });
    expect(calls).toEqual([]);
    const fits = await promptInput(chat("u".repeat(room)), "prompt", encoder, info);
    expect([fits.ids, fits.rendered, calls]).toEqual([
      [1, 2, 3],
      "rendered",
      ["chat 131072 prompt.chat false"],
    ]);
  });
});
