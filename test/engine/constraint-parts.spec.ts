// The pieces of constrained decoding that need no model: applying a token bitmask to logits, the
// JSON-safe rewriting of string patterns, the strict schema check and the tool-call grammar's schema.
import { core as mx } from "@frost-beta/mlx";
import { toolCallConstraint } from "../../src/constraint-spec";
import type { ConstraintSpec } from "../../src/engine-ipc";
import { jsonSafePattern, jsonSafeStrings } from "../../src/engine/json-strings";
import { checkSchema } from "../../src/engine/schema-support";
import { countAllowed, idsWithBit, TokenMasker } from "../../src/engine/token-mask";
import { toolCallGrammar } from "../../src/engine/tool-grammar";

/** A deterministic bitmask over `vocab` tokens allowing about `density` of them. */
function bitmask(vocab: number, density: number, seed: number): { mask: Int32Array; allowed: Set<number> } {
  const mask = new Int32Array(Math.ceil(vocab / 32));
  const allowed = new Set<number>();
  let s = seed;
  for (let id = 0; id < vocab; id++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    if (s / 2 ** 32 < density) {
      mask[id >> 5] |= 1 << (id & 31);
      allowed.add(id);
    }
  }
  // Bits past the vocabulary are set, as xgrammar may leave them; they must be ignored.
  for (let id = vocab; id < mask.length * 32; id++) mask[id >> 5] |= 1 << (id & 31);
  return { mask, allowed };
}

describe("TokenMasker", () => {
  const vocab = 1000;
  const masker = new TokenMasker(vocab);
  const logits = mx.random.normal([1, vocab], mx.float32, undefined, undefined, mx.random.key(3));
  const values = logits.reshape([-1]).tolist() as number[];

  // Densities that take each path: few allowed (ids), most allowed (refused ids), about half (halves).
  test.each([0.001, 0.03, 0.5, 0.97, 0.999, 1])(
    "keeps exactly the allowed logits at density %p",
    (density) => {
      const { mask, allowed } = bitmask(vocab, density, 17);
      expect(countAllowed(mask, vocab)).toBe(allowed.size);
      expect(idsWithBit(mask, vocab, 1)).toEqual([...allowed]);
      const out = masker.apply(logits, mask, allowed.size).tolist() as number[];
      expect(out).toHaveLength(vocab);
      out.forEach((v, id) => expect(v).toBe(allowed.has(id) ? values[id] : -Infinity));
    },
  );

  test("leaves out logits past the vocabulary (padding), and refuses too few", () => {
    const { mask, allowed } = bitmask(vocab, 0.5, 5);
    const padded = mx.concatenate([logits, mx.zeros([1, 200])], 1);
    const out = masker.apply(padded, mask, allowed.size).tolist() as number[];
    expect(out).toHaveLength(vocab);
    out.forEach((v, id) => expect(v).toBe(allowed.has(id) ? values[id] : -Infinity));
    expect(() => masker.apply(mx.zeros([1, 999]), new Int32Array(32), 1)).toThrow(/999/);
  });
});

describe("jsonSafePattern", () => {
  const strings = (pattern: string) => new RegExp(`^${jsonSafePattern(pattern)}$`, "u");

  test("matches raw JSON text: specials only as their escapes, never raw", () => {
    const dot = strings("^.{1,3}$");
    expect(dot.test('a\\"b')).toBe(true);
    expect(dot.test("a\\nb")).toBe(false); // \n is not matched by "."
    expect(dot.test("a\\tb")).toBe(true);
    expect(dot.test('a"b')).toBe(false);
    expect(dot.test("a\\q")).toBe(false); // not a JSON escape
    expect(dot.test("a\tb")).toBe(false);
    expect(strings('^"[a-z]"$').test('\\"x\\"')).toBe(true);
    expect(strings("^\\\\d$").test("\\\\d")).toBe(true);
  });

  test("groups the pattern and drops anchors, so a top-level alternative stays inside the string", () => {
    expect(jsonSafePattern("^a|b$")).toBe("(?:a|b)");
    expect(jsonSafePattern("^[0-9]{3}-\\d{2,}$")).toBe("(?:[0-9]{3}-[0-9]{2,})");
  });

  test("writes classes in the forms xgrammar reads right", () => {
    expect(jsonSafePattern("[^a-z]")).toBe(
      '(?:(?:[^\\x00-\\x1f"\\\\a-z]|\\\\[bfnrt]|\\\\u00[01][0-9a-f]|\\\\"|\\\\\\\\))',
    );
    expect(jsonSafePattern("[a-zé]")).toBe("(?:[a-z])"); // non-ASCII in a class is dropped
    expect(jsonSafePattern("café")).toBe("(?:café)"); // a literal stays
    expect(() => jsonSafePattern("[\\u4e00-\\u9fff]")).toThrow(/cannot generate/);
    expect(jsonSafePattern(".")).toContain("[^");
    expect(jsonSafePattern(".", true)).not.toContain("[^"); // exact: "." keeps out U+2028/U+2029
  });

  test("turns a length into a pattern and keeps format out of the way", () => {
    const schema = jsonSafeStrings(
      { type: "object", properties: { s: { type: "string", minLength: 2, maxLength: 4, format: "email" } } },
      "f",
      true,
    ) as { properties: { s: Record<string, unknown> } };
    expect(schema.properties.s).toEqual({ type: "string", pattern: '[^\\x00-\\x1f"\\\\]{2,4}' });
  });
});

describe("checkSchema", () => {
  const field = "f";
  const strictError = (schema: unknown) => {
    try {
      checkSchema(schema, field, true);
    } catch (err) {
      return (err as Error).message;
    }
    return undefined;
  };

  test("refuses what no grammar can express, strict or not", () => {
    expect(() => checkSchema(false, field, false)).toThrow("f: the schema at the top level is false");
    expect(() => checkSchema({ type: "foo" }, field, false)).toThrow(
      'f: unknown type "foo" at the top level',
    );
    expect(() => checkSchema({ properties: { a: { $ref: "#/$defs/b" } } }, field, false)).toThrow(
      'f: $ref "#/$defs/b" at properties.a points to nothing in the schema',
    );
    expect(() => checkSchema({ type: "array", items: [{}] }, field, false)).toThrow(/prefixItems/);
  });

  test("with strict, refuses the keywords the decoder would skip", () => {
    expect(strictError({ type: "integer", multipleOf: 2 })).toBe(
      "f: multipleOf at the top level cannot be enforced while decoding; remove it or set strict to false",
    );
    expect(strictError({ type: "object", properties: { a: { not: {} } } })).toMatch(
      /^f: not at properties.a/,
    );
    expect(strictError({ oneOf: [{ type: "string" }, { type: "integer" }] })).toMatch(/oneOf with more/);
    expect(strictError({ type: "object", anyOf: [{ required: ["a"] }] })).toMatch(/beside anyOf/);
    expect(strictError({ type: "object", required: ["a"] })).toMatch(/required name "a" missing/);
    expect(strictError({ minLength: 2 })).toMatch(/minLength in a schema without a type/);
    expect(strictError({ type: "string", pattern: "a", maxLength: 3 })).toMatch(/pattern together/);
    expect(strictError({ type: "array", uniqueItems: true })).toMatch(/uniqueItems/);
  });

  test("accepts what it enforces, and annotations", () => {
    const schema = {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      title: "t",
      type: "object",
      properties: {
        a: { $ref: "#/$defs/n", description: "d" },
        b: { anyOf: [{ type: "string", format: "date" }, { type: "null" }] },
        c: { type: "array", prefixItems: [{ const: 1 }], items: { enum: [1, 2] }, minItems: 1, maxItems: 3 },
      },
      required: ["a"],
      additionalProperties: false,
      $defs: { n: { type: "number", minimum: 0, exclusiveMaximum: 1 } },
    };
    expect(strictError(schema)).toBeUndefined();
  });
});

type ToolCall = Extract<ConstraintSpec, { kind: "tool_call" }>;

describe("toolCallGrammar", () => {
  const tools = [
    {
      name: "a",
      parametersJson: JSON.stringify({
        type: "object",
        properties: { x: { $ref: "#/$defs/x" } },
        $defs: { x: { type: "integer" } },
      }),
    },
    { name: "b", parametersJson: "" },
  ];

  test("one call of the named tool, its $refs rebased under the root's $defs", () => {
    const { schema, rules } = toolCallGrammar(toolCallConstraint("hermes", tools, { name: "a" }) as ToolCall);
    expect(schema).toEqual({
      type: "object",
      properties: { name: { const: "a" }, arguments: { $ref: "#/$defs/kvpark_tool_0" } },
      required: ["name", "arguments"],
      $defs: {
        kvpark_tool_0: {
          type: "object",
          properties: { x: { $ref: "#/$defs/kvpark_tool_0/$defs/x" } },
          $defs: { x: { type: "integer" } },
        },
      },
    });
    expect(rules).toBe('kvpark_tool_calls ::= "<tool_call>\\n" root "\\n</tool_call>"\n');
  });

  test("required: any tool, one call or more where the form delimits calls", () => {
    const hermes = toolCallGrammar(toolCallConstraint("hermes", tools, "required") as ToolCall);
    expect((hermes.schema as { anyOf: unknown[] }).anyOf).toHaveLength(2);
    expect(hermes.rules).toContain('kvpark_tool_call ("\\n" kvpark_tool_call)*');
    const mistral = toolCallGrammar(toolCallConstraint("mistral", tools, "required") as ToolCall);
    expect(mistral.schema).toMatchObject({ type: "array", minItems: 1 });
    expect(mistral.rules).toBe('kvpark_tool_calls ::= "[TOOL_CALLS]" root\n');
    const llama = toolCallGrammar(toolCallConstraint("llama3_json", tools, "required") as ToolCall);
    expect(llama.rules).toBe("kvpark_tool_calls ::= root\n");
  });

  test("names the tool whose parameters are not JSON", () => {
    const bad = toolCallConstraint("hermes", [tools[0], { name: "c", parametersJson: "{" }], "required");
    expect(() => toolCallGrammar(bad as ToolCall)).toThrow(
      /^prompt\.chat\.tools\[1\]\.parameters_json: not valid JSON/,
    );
  });

  test("toolCallConstraint checks the choice", () => {
    expect(() => toolCallConstraint("hermes", tools, { name: "zz" })).toThrow(
      'prompt.chat.tool_choice.tool_name: no tool is named "zz"',
    );
    expect(() => toolCallConstraint("hermes", [], "required")).toThrow(/at least one tool/);
  });
});
