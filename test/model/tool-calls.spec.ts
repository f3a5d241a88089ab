import { IncrementalDetokenizer, type ModelTokenizer } from "../../src/model/tokenizer";
import {
  newToolCallId,
  type OutputEvent,
  OutputParser,
  type OutputParserOptions,
  outputMarkers,
} from "../../src/model/tool-calls";
import { type Family, familyTokenizer } from "./families";

/** Deterministic ids: the tests check them exactly. */
function counterIds(): (format: string) => string {
  let n = 0;
  return () => `id${++n}`;
}

/** Feeds pieces (text, ids) and collects every event, end() included. */
function parse(options: OutputParserOptions, pieces: { text: string; ids: number[] }[]): OutputEvent[] {
  const parser = new OutputParser({ newId: counterIds(), ...options });
  const events = pieces.flatMap((p) => parser.push(p.text, p.ids));
  return [...events, ...parser.end()];
}

/** One piece per character; the ids are the characters' positions. */
const perChar = (text: string) => Array.from(text, (c, i) => ({ text: c, ids: [i] }));

/** Seeded random chunk sizes from 1 to 7 characters; one id per chunk. */
function randomChunks(text: string, seed: number): { text: string; ids: number[] }[] {
  let state = seed >>> 0;
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pieces = [];
  for (let i = 0, n = 0; i < text.length; n++) {
    const size = 1 + Math.floor(random() * 7);
    pieces.push({ text: text.slice(i, i + size), ids: [n] });
    i += size;
  }
  return pieces;
}

const tokenizers = new Map<Family, ModelTokenizer>();
const tokenizerOf = (family: Family): ModelTokenizer => {
  if (!tokenizers.has(family)) tokenizers.set(family, familyTokenizer(family));
  return tokenizers.get(family)!;
};

/**
 * One piece per generated token, as the engine streams them: the text encoded with the family's
 * tokenizer, decoded token by token the way the engine decodes (special tokens skipped but the
 * parser's markers kept).
 */
function perToken(text: string, family: Family, options: OutputParserOptions) {
  const tok = tokenizerOf(family);
  const ids = tok.encode(text, { addSpecialTokens: false });
  const keepSpecialIds = tok.specialIdsOf(outputMarkers(options.format, options.reasoning ?? false));
  const detok = new IncrementalDetokenizer(tok, { skipSpecialTokens: true, keepSpecialIds });
  const pieces = ids.map((id) => ({ text: detok.push(id), ids: [id] }));
  pieces.push({ text: detok.flush(), ids: [] });
  expect(pieces.map((p) => p.text).join("")).toBe(text);
  return { pieces, ids };
}

/** Events without ids, adjacent text (and reasoning) merged, empty ones left out. */
function merged(events: OutputEvent[]): object[] {
  const out: OutputEvent[] = [];
  for (const e of events) {
    const last = out.at(-1);
    if (e.kind !== "tool_call" && last?.kind === e.kind) last.text += e.text;
    else out.push({ ...e });
  }
  return out
    .filter((e) => e.kind === "tool_call" || e.text !== "")
    .map((e) => {
      const { tokenIds, ...rest } = e;
      void tokenIds;
      return rest;
    });
}

/**
 * Parses `output` split per character, in random chunks (three seeds) and per token of `family`'s
 * tokenizer; every split must give `expected`, and every id must land in exactly one event, in order.
 */
function expectParsed(
  family: Family,
  options: OutputParserOptions,
  output: string,
  expected: object[],
): void {
  const splits = [perChar(output), randomChunks(output, 1), randomChunks(output, 2), randomChunks(output, 3)];
  const token = perToken(output, family, options);
  for (const pieces of [...splits, token.pieces]) {
    const events = parse(options, pieces);
    expect(merged(events)).toEqual(expected);
    expect(events.flatMap((e) => e.tokenIds)).toEqual(pieces.flatMap((p) => p.ids));
  }
}

const text = (t: string) => ({ kind: "text", text: t });
const reasoning = (t: string) => ({ kind: "reasoning", text: t });
const call = (id: string, name: string, argumentsJson: string) => ({
  kind: "tool_call",
  id,
  name,
  argumentsJson,
});

const HERMES: OutputParserOptions = { format: "hermes", toolNames: ["get_weather", "get_time"] };
const QWEN3: OutputParserOptions = { ...HERMES, reasoning: true };
const LLAMA: OutputParserOptions = { format: "llama3_json", toolNames: ["get_weather", "get_time"] };
const MISTRAL: OutputParserOptions = { format: "mistral", toolNames: ["get_weather", "get_time"] };

describe("Hermes / Qwen2.5 output", () => {
  it("text, then several calls in a row; arguments exactly as written", () => {
    expectParsed(
      "qwen25",
      HERMES,
      'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' +
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET", "n": 12345678901234567890, "x": 1.0}}\n</tool_call>',
      [
        text("Let me check."),
        call("id1", "get_weather", '{"city": "Paris"}'),
        call("id2", "get_time", '{"tz": "CET", "n": 12345678901234567890, "x": 1.0}'),
      ],
    );
  });

  it("streams text at once and holds back only what may start a call", () => {
    const events = parse(HERMES, perChar("Hi <b>\n<tool"));
    expect(events).toEqual([
      { kind: "text", text: "H", tokenIds: [0] },
      { kind: "text", text: "i", tokenIds: [1] },
      // " <" waits for the next character; "<b" cannot start <tool_call>.
      { kind: "text", text: " <b", tokenIds: [2, 3, 4] },
      { kind: "text", text: ">", tokenIds: [5] },
      // "\n<tool" was held until the end.
      { kind: "text", text: "\n<tool", tokenIds: [6, 7, 8, 9, 10, 11] },
    ]);
  });

  it("gives a call the ids of its marker, its JSON and the whitespace before it", () => {
    const output = 'Hi\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>';
    const events = parse(HERMES, perChar(output));
    expect(events).toEqual([
      { kind: "text", text: "H", tokenIds: [0] },
      { kind: "text", text: "i", tokenIds: [1] },
      {
        kind: "tool_call",
        id: "id1",
        name: "get_time",
        argumentsJson: "{}",
        tokenIds: Array.from({ length: output.length - 2 }, (_, i) => i + 2),
      },
    ]);
  });

  it("emits malformed calls, unknown tools and unfinished calls as the text they were", () => {
    const bad = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>';
    expectParsed("qwen25", HERMES, bad, [text(bad)]);
    const unknown = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>';
    expectParsed("qwen25", HERMES, `${unknown} ok`, [text(`${unknown} ok`)]);
    // Without a tool list any name is a call.
    expectParsed("qwen25", { format: "hermes" }, unknown, [call("id1", "rm_rf", "{}")]);
    const cut = 'Sure.\n<tool_call>\n{"name": "get_wea';
    expectParsed("qwen25", HERMES, cut, [text(cut)]);
    // Not JSON after the marker: the marker is text and reading goes on.
    expectParsed("qwen25", HERMES, "Use <tool_call> tags.", [text("Use <tool_call> tags.")]);
  });

  it("accepts a complete call whose closing tag never came, and text after a call", () => {
    expectParsed(
      "qwen25",
      HERMES,
      '<tool_call>\n{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}\n',
      [call("id1", "get_time", '{"tz": "UTC"}')],
    );
    expectParsed(
      "qwen25",
      HERMES,
      '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\nDone.',
      [call("id1", "get_time", "{}"), text("\nDone.")],
    );
  });
});

describe("Qwen3 output with reasoning", () => {
  it("turns <think> into reasoning, then reads the calls", () => {
    expectParsed(
      "qwen3",
      QWEN3,
      '<think>\nThe user wants the weather.\n\nCall the tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
      [
        reasoning("The user wants the weather.\n\nCall the tool."),
        call("id1", "get_weather", '{"city": "Paris"}'),
      ],
    );
  });

  it("starts in reasoning when the prompt opened <think>", () => {
    expectParsed("qwen3", { ...QWEN3, startInReasoning: true }, "Short thought.\n</think>\n\nHello!", [
      reasoning("Short thought."),
      text("Hello!"),
    ]);
  });

  it("gives the closing tag's ids to the reasoning", () => {
    const events = parse(QWEN3, perChar("<think>\nab\n</think>\n\nHi"));
    expect(events).toEqual([
      // "<think>\n" went with the first reasoning character.
      { kind: "reasoning", text: "a", tokenIds: [0, 1, 2, 3, 4, 5, 6, 7, 8] },
      { kind: "reasoning", text: "b", tokenIds: [9] },
      { kind: "reasoning", text: "", tokenIds: [10, 11, 12, 13, 14, 15, 16, 17, 18] },
      { kind: "text", text: "H", tokenIds: [19, 20, 21] },
      { kind: "text", text: "i", tokenIds: [22] },
    ]);
  });

  it("leaves an answer without reasoning, a late <think> and unfinished reasoning alone", () => {
    expectParsed("qwen3", QWEN3, "Hello there", [text("Hello there")]);
    expectParsed("qwen3", QWEN3, "I write <think> tags.", [text("I write <think> tags.")]);
    expectParsed("qwen3", QWEN3, "<think>\nhmm, let me", [reasoning("hmm, let me")]);
    expectParsed("qwen3", { format: null, reasoning: true }, "<think>x</think>\n<tool_call>", [
      reasoning("x"),
      text("<tool_call>"),
    ]);
  });
});

describe("Llama 3.1 output", () => {
  it("reads an answer that is a JSON call, with or without <|python_tag|>", () => {
    const json = '{"name": "get_weather", "parameters": {"city": "Paris"}}';
    expectParsed("llama31", LLAMA, json, [call("id1", "get_weather", '{"city": "Paris"}')]);
    expectParsed("llama31", LLAMA, `<|python_tag|>${json}`, [
      call("id1", "get_weather", '{"city": "Paris"}'),
    ]);
    expectParsed(
      "llama31",
      LLAMA,
      '{"type": "function", "name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}',
      [call("id1", "get_time", "{}"), call("id2", "get_weather", '{"city": "Oslo"}')],
    );
  });

  it("leaves a plain answer and a JSON answer that is no call as text", () => {
    expectParsed("llama31", LLAMA, "The weather is nice.", [text("The weather is nice.")]);
    expectParsed("llama31", LLAMA, '{"answer": 42}', [text('{"answer": 42}')]);
    // A "name" without parameters is data, not a call.
    expectParsed("llama31", { format: "llama3_json" }, '{"name": "Bob"} is here', [
      text('{"name": "Bob"} is here'),
    ]);
    // Plain text streams at once.
    expect(parse(LLAMA, perChar("Ok"))).toEqual([
      { kind: "text", text: "O", tokenIds: [0] },
      { kind: "text", text: "k", tokenIds: [1] },
    ]);
  });
});

describe("Mistral output", () => {
  it("reads a [TOOL_CALLS] list, keeping the ids the model wrote", () => {
    expectParsed(
      "mistralNemo",
      MISTRAL,
      'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}, {"name": "get_time", "arguments": {}}]',
      [text("Sure."), call("abcDEF123", "get_weather", '{"city": "Paris"}'), call("id1", "get_time", "{}")],
    );
  });

  it("reads the newer [TOOL_CALLS]name[ARGS]{...} form, with [CALL_ID] or without", () => {
    expectParsed(
      "mistralNemo",
      MISTRAL,
      '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{}',
      [call("id1", "get_weather", '{"city": "Paris"}'), call("a1b2c3d4e", "get_time", "{}")],
    );
  });

  it("keeps a list with a bad call, and an unfinished one, as text", () => {
    const bad = '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "nope", "arguments": {}}]';
    expectParsed("mistralNemo", MISTRAL, bad, [text(bad)]);
    expectParsed("mistralNemo", MISTRAL, "Hello [TOOL_CALLS] everyone", [
      text("Hello [TOOL_CALLS] everyone"),
    ]);
    expectParsed("mistralNemo", MISTRAL, "Wait [TOOL_CA", [text("Wait [TOOL_CA")]);
  });
});

describe("tool call ids", () => {
  it("are call_ plus 24 alphanumerics, or 9 alphanumerics for Mistral", () => {
    expect(newToolCallId("hermes")).toMatch(/^call_[A-Za-z0-9]{24}$/);
    expect(newToolCallId("llama3_json")).toMatch(/^call_[A-Za-z0-9]{24}$/);
    expect(newToolCallId("mistral")).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(newToolCallId("hermes")).not.toBe(newToolCallId("hermes"));
    const parser = new OutputParser({ format: "mistral" });
    const [event] = [
      ...parser.push('[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "bad"}]', [1]),
      ...parser.end(),
    ];
    expect(event).toMatchObject({ kind: "tool_call", name: "f" });
    expect((event as { id: string }).id).toMatch(/^[A-Za-z0-9]{9}$/);
  });
});
