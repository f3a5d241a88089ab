import { ToolChoiceMode } from "../../gen/kvpark/v1/common_pb";
import { KvparkError, invalidField } from "../../src/errors";
import { HttpError } from "../../src/http/api";
import { chatFieldNames, renderError, textFieldNames } from "../../src/http/openai-errors";
import { chatRequest, textRequest } from "../../src/http/openai-request";

const hi = [{ role: "user", content: "Hi" }];

/** The error object a body is refused with. */
function refusal(parse: () => unknown) {
  try {
    parse();
  } catch (err) {
    return renderError(err).body.error;
  }
  throw new Error("the body was accepted");
}

describe("OpenAI chat bodies as Generate requests", () => {
  it("carries messages, tools, tool choice, response format and sampling over", () => {
    const parsed = chatRequest({
      model: "tiny",
      messages: [
        { role: "developer", content: "Be brief." },
        {
          role: "user",
          content: [
            { type: "text", text: "a" },
            { type: "text", text: "b" },
          ],
        },
        {
          role: "assistant",
          content: null,
          refusal: null,
          reasoning_content: "thinking",
          tool_calls: [
            { id: "call_1", type: "function", function: { name: "f", arguments: '{"x":1}' } },
            { id: "call_2", type: "function", function: { name: "f", arguments: { x: 2 } } },
          ],
        },
        { role: "tool", tool_call_id: "call_1", content: [{ type: "text", text: "one" }] },
        { role: "tool", tool_call_id: "call_2", content: "two" },
      ],
      tools: [{ type: "function", function: { name: "f", parameters: { type: "object" }, strict: true } }],
      tool_choice: { type: "function", function: { name: "f" } },
      response_format: {
        type: "json_schema",
        json_schema: { name: "s", schema: { type: "object" }, strict: true },
      },
      max_completion_tokens: 9,
      temperature: 0.5,
      top_p: 0.9,
      top_k: -1,
      seed: -1,
      stop: "END",
      stream: true,
      stream_options: { include_usage: true },
      user: "someone",
      n: 1,
      logprobs: false,
    });
    expect([parsed.stream, parsed.includeUsage]).toEqual([true, true]);
    const { prompt, sampling } = parsed.request;
    if (prompt?.kind.case !== "chat") throw new Error("not a chat prompt");
    const chat = prompt.kind.value;
    expect(chat.messages.map((m) => [m.role, m.content])).toEqual([
      ["system", "Be brief."],
      ["user", "a\nb"],
      ["assistant", ""],
      ["tool", "one"],
      ["tool", "two"],
    ]);
    expect(chat.messages[2].reasoning).toBe("thinking");
    expect(chat.messages[2].toolCalls.map((c) => [c.id, c.name, c.argumentsJson])).toEqual([
      ["call_1", "f", '{"x":1}'],
      ["call_2", "f", '{"x":2}'],
    ]);
    expect(chat.messages[3].toolCallId).toBe("call_1");
    expect(chat.tools.map((t) => [t.name, t.parametersJson])).toEqual([["f", '{"type":"object"}']]);
    expect(chat.toolChoice?.choice).toEqual({ case: "toolName", value: "f" });
    expect(sampling).toMatchObject({ maxTokens: 9, temperature: 0.5, topP: 0.9, topK: 0, stop: ["END"] });
    expect(sampling?.seed).toBe(2n ** 64n - 1n);
    expect(sampling?.responseFormat?.format).toMatchObject({
      case: "jsonSchema",
      value: { name: "s", schemaJson: '{"type":"object"}', strict: true },
    });
  });

  it("maps the tool choice modes", () => {
    const mode = (tool_choice: string) => {
      const { prompt } = chatRequest({ messages: hi, tool_choice }).request;
      return prompt?.kind.case === "chat" ? prompt.kind.value.toolChoice?.choice : undefined;
    };
    expect(mode("auto")).toEqual({ case: "mode", value: ToolChoiceMode.AUTO });
    expect(mode("none")).toEqual({ case: "mode", value: ToolChoiceMode.NONE });
    expect(mode("required")).toEqual({ case: "mode", value: ToolChoiceMode.REQUIRED });
  });

  it.each([
    [{ n: 3 }, "n", "unsupported_parameter"],
    [{ presence_penalty: 0.1 }, "presence_penalty", "unsupported_parameter"],
    [{ logprobs: true }, "logprobs", "unsupported_parameter"],
    [{ functions: [] }, "functions", "unsupported_parameter"],
    [{ reasoning_effort: "low" }, "reasoning_effort", "unsupported_parameter"],
    [{ modalities: ["text", "audio"] }, "modalities", "unsupported_parameter"],
    [{ logit_bias: { 1: 1 } }, "logit_bias", "unsupported_parameter"],
    [{ mirostat: 1 }, "mirostat", "unknown_parameter"],
    [{ constructor: 1 }, "constructor", "unknown_parameter"],
    [{ max_tokens: 3, max_completion_tokens: 4 }, "max_tokens", null],
    [{ temperature: "hot" }, "temperature", null],
    [{ stop: 5 }, "stop", null],
    [{ tool_choice: "sometimes" }, "tool_choice", null],
    [{ response_format: { type: "yaml" } }, "response_format.type", null],
    [{ tools: [{ type: "custom", custom: { name: "x" } }] }, "tools[0].type", "unsupported_parameter"],
    [
      { tools: [{ type: "function", function: { name: "x", examples: [] } }] },
      "tools[0].function.examples",
      "unknown_parameter",
    ],
  ])("refuses %j, naming %s", (fields, param, code) => {
    expect(refusal(() => chatRequest({ messages: hi, ...fields }))).toMatchObject({
      param,
      code,
      type: "invalid_request_error",
    });
  });

  it.each([
    [
      { role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] },
      "messages[0].content[0].type",
    ],
    [{ role: "user", content: [{ type: "input_audio", input_audio: {} }] }, "messages[0].content[0].type"],
    [{ role: "user", content: "x", name: "bob" }, "messages[0].name"],
    [{ role: "function", content: "x", name: "f" }, "messages[0].role"],
    [{ role: "toString", content: "x" }, "messages[0].role"],
    [{ role: "user" }, "messages[0].content"],
    [{ role: "user", content: "x", weight: 2 }, "messages[0].weight"],
    [{ role: "assistant", content: "x", refusal: "no" }, "messages[0].refusal"],
  ])("refuses the message %j, naming %s", (message, param) => {
    expect(refusal(() => chatRequest({ messages: [message] })).param).toBe(param);
  });
});

describe("OpenAI completion bodies as Generate requests", () => {
  it("takes a text prompt, token ids, and a batch of one", () => {
    const kind = (prompt: unknown) => textRequest({ prompt }).request.prompt?.kind;
    expect(kind("Hello")).toEqual({ case: "text", value: "Hello" });
    expect(kind(["Hello"])).toEqual({ case: "text", value: "Hello" });
    expect(kind([[1, 2]])?.case).toBe("tokens");
    const ids = kind([1, 2, 3]);
    expect(ids?.case === "tokens" && ids.value.ids).toEqual([1, 2, 3]);
  });

  it.each([
    [{ prompt: ["a", "b"] }, "prompt"],
    [{ prompt: [1.5] }, "prompt[0]"],
    [{ prompt: "a", echo: true }, "echo"],
    [{ prompt: "a", suffix: "z" }, "suffix"],
    [{ prompt: "a", best_of: 2 }, "best_of"],
    [{ prompt: "a", logprobs: 0 }, "logprobs"],
    [{ prompt: "a", response_format: { type: "json_object" } }, "response_format"],
  ])("refuses %j, naming %s", (body, param) => {
    expect(refusal(() => textRequest(body)).param).toBe(param);
  });
});

describe("errors in OpenAI's shape", () => {
  it("translates kvpark's field names into the request's", () => {
    const names = chatFieldNames("max_completion_tokens");
    const cases: [string, string][] = [
      [
        "prompt.chat.messages[1].tool_calls[0].arguments_json",
        "messages[1].tool_calls[0].function.arguments",
      ],
      ["prompt.chat.tools[2].parameters_json", "tools[2].function.parameters"],
      ["prompt.chat.tool_choice.tool_name", "tool_choice.function.name"],
      ["prompt.chat.messages[0].role", "messages[0].role"],
      ["sampling.max_tokens", "max_completion_tokens"],
      ["sampling.response_format.json_schema.schema_json", "response_format.json_schema.schema"],
      ["sampling.stop[1]", "stop[1]"],
    ];
    for (const [kvpark, openai] of cases) {
      const { body } = renderError(invalidField(kvpark, "wrong"), names);
      expect([body.error.param, body.error.message]).toEqual([openai, `${openai}: wrong`]);
    }
    const tokens = renderError(invalidField("prompt.tokens.ids[3]", "outside"), textFieldNames("max_tokens"));
    expect(tokens.body.error.param).toBe("prompt[3]");
  });

  it("gives each status its OpenAI status, type and code", () => {
    const render = (err: unknown) => {
      const r = renderError(err);
      return [r.status, r.body.error.type, r.body.error.code, r.headers["retry-after"]];
    };
    expect(render(new KvparkError("OUT_OF_RANGE", "prompt: too long"))).toEqual([
      400,
      "invalid_request_error",
      "context_length_exceeded",
      undefined,
    ]);
    expect(render(new KvparkError("RESOURCE_EXHAUSTED", "busy"))).toEqual([
      429,
      "rate_limit_error",
      "server_busy",
      "1",
    ]);
    expect(render(new KvparkError("ENGINE_UNAVAILABLE", "starting"))).toEqual([
      503,
      "server_error",
      "engine_unavailable",
      "1",
    ]);
    expect(render(new HttpError(413, "too big"))).toEqual([
      413,
      "invalid_request_error",
      "request_too_large",
      undefined,
    ]);
    const internal = new Error("/secret/path exploded");
    const rendered = renderError(internal);
    expect([rendered.status, rendered.body.error.type]).toEqual([500, "server_error"]);
    expect(rendered.body.error.message).not.toContain("secret");
    expect(rendered.internal).toBe(internal);
  });
});
