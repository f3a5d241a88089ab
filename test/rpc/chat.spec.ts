import { create } from "@bufbuild/protobuf";
import { ChatPromptSchema, ToolChoiceMode, type ChatPrompt } from "../../gen/kvpark/v1/common_pb";
import { KvparkError } from "../../src/errors";
import { ModelTokenizer } from "../../src/model/tokenizer";
import { checkChat, renderChat } from "../../src/rpc/chat";
import { testModel } from "../helpers/server";

type Init = Parameters<typeof create<typeof ChatPromptSchema>>[1];
const chat = (init: Init): ChatPrompt => create(ChatPromptSchema, init);
const weather = {
  name: "get_weather",
  description: "Weather of a city",
  parametersJson: JSON.stringify({
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
  }),
};
const call = { id: "call_1", name: "get_weather", argumentsJson: '{"city":"Oslo"}' };

function refusal(init: Init): string {
  try {
    checkChat(chat(init), "prompt.chat");
  } catch (err) {
    expect(err).toBeInstanceOf(KvparkError);
    expect((err as KvparkError).code).toBe("INVALID_ARGUMENT");
    return (err as Error).message;
  }
  throw new Error("accepted");
}

describe("checkChat", () => {
  it("passes tools, tool calls and results to the template in Hugging Face's shapes", () => {
    const c = checkChat(
      chat({
        tools: [weather],
        toolChoice: { choice: { case: "mode", value: ToolChoiceMode.REQUIRED } },
        messages: [
          { role: "user", content: "Weather in Oslo?" },
          { role: "assistant", content: "", toolCalls: [call], reasoning: "Look it up." },
          { role: "tool", content: "12 C", toolCallId: "call_1" },
        ],
      }),
      "prompt.chat",
    );
    expect(c.tools).toEqual([
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather of a city",
          parameters: JSON.parse(weather.parametersJson),
        },
      },
    ]);
    expect(c.messages[1]).toEqual({
      role: "assistant",
      content: "",
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "get_weather", arguments: { city: "Oslo" } } },
      ],
      reasoning_content: "Look it up.",
    });
    expect(c.messages[2]).toEqual({
      role: "tool",
      content: "12 C",
      tool_call_id: "call_1",
      name: "get_weather",
    });
    expect(c.toolChoice).toBe("required");
    expect(c.toolSpecs).toEqual([{ name: "get_weather", parametersJson: weather.parametersJson }]);
  });

  it("refuses malformed tools, unknown tools, unmatched results, each naming the field", () => {
    expect(
      refusal({ messages: [{ role: "user", content: "x" }], tools: [{ ...weather, parametersJson: "{" }] }),
    ).toMatch(/^prompt\.chat\.tools\[0\]\.parameters_json: not valid JSON/);
    expect(
      refusal({ messages: [{ role: "user", content: "x" }], tools: [{ ...weather, parametersJson: "[]" }] }),
    ).toBe("prompt.chat.tools[0].parameters_json: must be a JSON object");
    expect(
      refusal({ messages: [{ role: "user", content: "x" }], tools: [{ ...weather, name: "bad name" }] }),
    ).toBe("prompt.chat.tools[0].name: must be 1 to 64 characters of letters, digits, '_', '-' and '.'");
    expect(refusal({ messages: [{ role: "user", content: "x" }], tools: [weather, weather] })).toBe(
      "prompt.chat.tools[1].name: a second tool named get_weather",
    );
    expect(
      refusal({
        messages: [{ role: "assistant", content: "", toolCalls: [{ ...call, name: "search" }] }],
        tools: [weather],
      }),
    ).toBe('prompt.chat.messages[0].tool_calls[0].name: no tool named "search" in prompt.chat.tools');
    expect(
      refusal({ messages: [{ role: "tool", content: "12 C", toolCallId: "call_9" }], tools: [weather] }),
    ).toBe('prompt.chat.messages[0].tool_call_id: no earlier tool call has id "call_9"');
    expect(
      refusal({
        messages: [
          { role: "assistant", content: "", toolCalls: [call] },
          { role: "tool", content: "12 C", toolCallId: "call_1" },
          { role: "tool", content: "12 C", toolCallId: "call_1" },
        ],
        tools: [weather],
      }),
    ).toBe('prompt.chat.messages[2].tool_call_id: no earlier tool call has id "call_1"');
    expect(
      refusal({
        messages: [{ role: "user", content: "x" }],
        toolChoice: { choice: { case: "toolName", value: "search" } },
        tools: [weather],
      }),
    ).toBe('prompt.chat.tool_choice.tool_name: no tool named "search"');
    expect(
      refusal({
        messages: [{ role: "user", content: "x" }],
        toolChoice: { choice: { case: "mode", value: ToolChoiceMode.REQUIRED } },
      }),
    ).toBe("prompt.chat.tool_choice: requires tools");
    expect(refusal({ messages: [{ role: "user", content: "x", toolCallId: "call_1" }] })).toBe(
      "prompt.chat.messages[0].tool_call_id: set only in a tool message",
    );
  });
});

describe("tool results without an id", () => {
  it("answer the oldest call waiting, stand alone without structured calls, and are refused otherwise", () => {
    const answered = checkChat(
      chat({
        tools: [weather],
        messages: [
          { role: "assistant", content: "", toolCalls: [call, { ...call, id: "call_2" }] },
          { role: "tool", content: "12 C" },
          { role: "tool", content: "13 C" },
        ],
      }),
      "prompt.chat",
    );
    expect(answered.messages.slice(1).map((m) => m.tool_call_id)).toEqual(["call_1", "call_2"]);
    const free = checkChat(
      chat({
        messages: [
          { role: "assistant", content: "<tool_call>...</tool_call>" },
          { role: "tool", content: "12 C" },
        ],
      }),
      "prompt.chat",
    );
    expect(free.messages[1]).toEqual({ role: "tool", content: "12 C" });
    expect(
      refusal({
        tools: [weather],
        messages: [
          { role: "assistant", content: "", toolCalls: [call] },
          { role: "tool", content: "12 C" },
          { role: "tool", content: "13 C" },
        ],
      }),
    ).toBe("prompt.chat.messages[2].tool_call_id: no earlier tool call is waiting for a result");
  });
});

describe("renderChat", () => {
  const tokenizer = ModelTokenizer.fromDir(testModel());
  const next = checkChat(chat({ messages: [{ role: "user", content: "And then?" }] }), "c");

  // The whole conversation renders as its head followed by the continuation, so the continuation
  // holds nothing a new conversation opens with (BOS, a default system prompt).
  it("renders a continuation as the template writes those messages after a conversation", () => {
    const whole = checkChat(
      chat({
        messages: [
          { role: "user", content: "Hello" },
          { role: "assistant", content: "Hi." },
          { role: "user", content: "And then?" },
        ],
      }),
      "c",
    );
    const head = tokenizer.applyChatTemplate(
      [
        { role: "user", content: "Hello" },
        { role: "assistant", content: "Hi." },
      ],
      { addGenerationPrompt: false },
    );
    const cont = renderChat(next, tokenizer, "c", true);
    expect(head + cont.prompt).toBe(renderChat(whole, tokenizer, "c").prompt);
    expect(cont.ids).toEqual(tokenizer.encode(cont.prompt, { addSpecialTokens: false }));
  });
});
