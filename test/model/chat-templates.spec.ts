import {
  CHATML_TEMPLATE,
  DEFAULT_SYSTEM_PROMPT,
  buildTokenizerFiles,
} from "../../src/model-gen/tokenizer-gen";
import { type ChatMessage, ModelTokenizer, TokenizerError } from "../../src/model/tokenizer";
import { outputMarkers, promptOpensReasoning } from "../../src/model/tool-calls";
import { type Family, familyTokenizer, fixtureTemplate } from "./families";

// A small conversation with a tool, a call and its result, as transformers' apply_chat_template takes
// it (the RPC layer builds this shape from the contract's messages).
const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
];
const TOOL_JSON =
  '{"type": "function", "function": {"name": "get_weather", "description": "Current weather", ' +
  '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}';
// Mistral's template refuses call ids other than 9 alphanumerics.
const CALL_ID = "call0001A";
const CONVERSATION: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Weather in Paris?" },
  {
    role: "assistant",
    content: "",
    reasoning_content: "Need the weather.",
    tool_calls: [
      {
        id: CALL_ID,
        type: "function",
        function: { name: "get_weather", arguments: { city: "Paris", unit: "C" } },
      },
    ],
  },
  { role: "tool", content: "22", tool_call_id: CALL_ID, name: "get_weather" },
];

const QWEN_TOOLS_SYSTEM =
  "<|im_start|>system\nYou are terse.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
  TOOL_JSON +
  "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " +
  '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n' +
  "</tool_call><|im_end|>\n";
const QWEN_CALL =
  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>';
const QWEN_RESULT = "<|im_start|>user\n<tool_response>\n22\n</tool_response><|im_end|>\n";

const tokenizers = new Map<Family, ModelTokenizer>();
const tokenizer = (family: Family): ModelTokenizer => {
  if (!tokenizers.has(family)) tokenizers.set(family, familyTokenizer(family));
  return tokenizers.get(family)!;
};
const render = (family: Family, messages = CONVERSATION, extra: object = {}) =>
  tokenizer(family).renderAndEncode(messages, { addGenerationPrompt: true, tools: TOOLS, ...extra });

describe("tools, calls and results through the real templates", () => {
  it("Qwen2.5: tools in the system prompt, the call in <tool_call>, the result as a user turn", () => {
    const { prompt, ids } = render("qwen25");
    expect(prompt).toBe(
      QWEN_TOOLS_SYSTEM +
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n" +
        // No content, so no newline before the call; Qwen2.5 has no place for reasoning.
        `<|im_start|>assistant\n${QWEN_CALL}<|im_end|>\n` +
        QWEN_RESULT +
        "<|im_start|>assistant\n",
    );
    const tok = tokenizer("qwen25");
    expect(ids).toEqual(tok.encode(prompt, { addSpecialTokens: false }));
    // The markers are single tokens of the vocabulary: two in the instructions, one in the call.
    expect(ids.filter((id) => id === tok.tokenToId("<tool_call>"))).toHaveLength(3);
    expect(ids.filter((id) => id === tok.tokenToId("</tool_call>"))).toHaveLength(3);
  });

  it("Qwen3: the reasoning of the turn after the last question goes into <think>", () => {
    expect(render("qwen3").prompt).toBe(
      QWEN_TOOLS_SYSTEM +
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n" +
        `<|im_start|>assistant\n<think>\nNeed the weather.\n</think>\n\n${QWEN_CALL}<|im_end|>\n` +
        QWEN_RESULT +
        "<|im_start|>assistant\n",
    );
    // enable_thinking=false closes an empty think block in the generation prompt.
    const noThinking = render("qwen3", [{ role: "user", content: "Hi" }], {
      tools: undefined,
      variables: { enable_thinking: false },
    }).prompt;
    expect(noThinking).toBe("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    expect(promptOpensReasoning(noThinking)).toBe(false);
    expect(promptOpensReasoning("<|im_start|>assistant\n<think>\n")).toBe(true);
  });

  it("Llama 3.1: tools in the first user message, the call as bare JSON, the result in the ipython role", () => {
    const { prompt, ids } = render("llama31");
    expect(prompt).toBe(
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" +
        "You are terse.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\n" +
        "Given the following functions, please respond with a JSON for a function call with its proper arguments " +
        "that best answers the given prompt.\n\n" +
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' +
        "Do not use variables.\n\n" +
        JSON.stringify(TOOLS[0], null, 4) +
        "\n\nWeather in Paris?<|eot_id|>" +
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}<|eot_id|>' +
        // A string is iterable in Jinja, so the template prints the result with tojson.
        '<|start_header_id|>ipython<|end_header_id|>\n\n"22"<|eot_id|>' +
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    );
    // The template writes the BOS itself: it is not added twice.
    const bos = tokenizer("llama31").tokenToId("<|begin_of_text|>");
    expect(ids.filter((id) => id === bos)).toEqual([bos]);
  });

  it("Mistral Nemo: tools before the last question, calls with their ids, results with the call id", () => {
    expect(render("mistralNemo").prompt).toBe(
      `<s>[AVAILABLE_TOOLS][${TOOL_JSON}][/AVAILABLE_TOOLS][INST]Weather in Paris?[/INST]` +
        `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}, "id": "${CALL_ID}"}]</s>` +
        `[TOOL_RESULTS]{"content": 22, "call_id": "${CALL_ID}"}[/TOOL_RESULTS]`,
    );
    // The system prompt joins the last user message (here the last message).
    expect(render("mistralNemo", CONVERSATION.slice(0, 2)).prompt).toBe(
      `<s>[AVAILABLE_TOOLS][${TOOL_JSON}][/AVAILABLE_TOOLS][INST]You are terse.\n\nWeather in Paris?[/INST]`,
    );
    // Its own check of call ids reaches the caller as a rejected conversation.
    const badId = CONVERSATION.map((m) => (m.role === "tool" ? { ...m, tool_call_id: "call_1" } : m));
    expect(() => render("mistralNemo", badId)).toThrow(
      "chat template rejected the conversation: Tool call IDs should be alphanumeric strings with length 9!",
    );
  });

  it("renders a conversation without tools as before", () => {
    const messages = [{ role: "user", content: "Hi" }];
    expect(tokenizer("qwen25").renderAndEncode(messages, { addGenerationPrompt: true }).prompt).toBe(
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" +
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
    expect(tokenizer("mistralNemo").renderAndEncode(messages, { addGenerationPrompt: true }).prompt).toBe(
      "<s>[INST]Hi[/INST]",
    );
  });
});

describe("what a template reads", () => {
  it("refuses tools for a template that does not read them instead of dropping them", () => {
    const chatml =
      "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}";
    const plain = familyTokenizer("qwen25", chatml);
    expect(plain.templateUsesTools).toBe(false);
    expect(plain.toolCallFormat).toBeNull();
    const messages = [{ role: "user", content: "Hi" }];
    expect(plain.applyChatTemplate(messages, { addGenerationPrompt: false })).toBe(
      "<|im_start|>user\nHi<|im_end|>\n",
    );
    let error: unknown;
    try {
      plain.renderAndEncode(messages, { addGenerationPrompt: false, tools: TOOLS });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TokenizerError);
    expect(error).toMatchObject({
      code: "CHAT_TEMPLATE_FAILED",
      message: "the model's chat template does not take tools; send the request without tools",
    });
    // An empty tool list is no tools.
    expect(plain.applyChatTemplate(messages, { addGenerationPrompt: false, tools: [] })).toBe(
      "<|im_start|>user\nHi<|im_end|>\n",
    );
    for (const family of ["qwen25", "qwen3", "llama31", "mistralNemo"] as const) {
      expect(tokenizer(family).templateUsesTools).toBe(true);
    }
  });

  it("puts the reasoning under the field the template reads", () => {
    const reads = (field: string) =>
      familyTokenizer("qwen25", `{% for m in messages %}[{{ m.${field} }}]{% endfor %}`).applyChatTemplate(
        [
          { role: "assistant", content: "A", reasoning_content: "R" },
          { role: "user", content: "U" },
        ],
        { addGenerationPrompt: false },
      );
    expect(reads("reasoning_content")).toBe("[R][]");
    expect(reads("reasoning")).toBe("[R][]");
    expect(reads("thinking")).toBe("[R][]");
  });

  it("detects each family's tool-call format and reasoning", () => {
    const facts = (tok: ModelTokenizer) => [tok.toolCallFormat, tok.reasoning];
    expect(facts(tokenizer("qwen25"))).toEqual(["hermes", false]);
    expect(facts(tokenizer("qwen3"))).toEqual(["hermes", true]);
    expect(facts(tokenizer("llama31"))).toEqual(["llama3_json", false]);
    expect(facts(tokenizer("mistralNemo"))).toEqual(["mistral", false]);
    const generated = buildTokenizerFiles({ vocabSize: 512 });
    const defaultModel = new ModelTokenizer({
      tokenizerJson: generated.tokenizerJson,
      tokenizerConfig: generated.tokenizerConfig,
    });
    expect(facts(defaultModel)).toEqual(["hermes", false]);
  });

  it("keeps marker tokens a skip-special decode would drop, when asked", () => {
    const mistral = tokenizer("mistralNemo");
    const ids = mistral.encode('[TOOL_CALLS][{"name": "f"}]</s>', { addSpecialTokens: false });
    const keep = mistral.specialIdsOf(outputMarkers("mistral", false));
    expect(keep).toEqual(new Set([mistral.tokenToId("[TOOL_CALLS]")]));
    expect(mistral.decode(ids, { skipSpecialTokens: true })).toBe('[{"name": "f"}]');
    expect(mistral.decode(ids, { skipSpecialTokens: true, keepSpecialIds: keep })).toBe(
      '[TOOL_CALLS][{"name": "f"}]',
    );
    expect(mistral.decode(ids)).toBe('[TOOL_CALLS][{"name": "f"}]</s>');
    // Qwen's <tool_call> is no special token: nothing to keep, it is never dropped.
    const qwen = tokenizer("qwen25");
    expect(qwen.specialIdsOf(outputMarkers("hermes", false)).size).toBe(0);
    const call = qwen.encode("<tool_call>x</tool_call><|im_end|>", { addSpecialTokens: false });
    expect(qwen.decode(call, { skipSpecialTokens: true })).toBe("<tool_call>x</tool_call>");
  });
});

describe("the generated default model's template", () => {
  it("is Qwen2.5's, word for word but for the default system prompt", () => {
    const qwen = fixtureTemplate("Qwen-Qwen2.5-7B-Instruct.jinja");
    expect(qwen.includes("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")).toBe(true);
    expect(CHATML_TEMPLATE).toBe(
      qwen.replaceAll(
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        DEFAULT_SYSTEM_PROMPT,
      ),
    );
  });
});
