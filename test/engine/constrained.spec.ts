// Constrained decoding through the engine's Sequence, in process, on the random-weight `tiny` model:
// seeded samples at temperature 1 (near-uniform over whatever the grammar allows, the hardest case
// for a grammar) must all be valid under their schema, forced tool calls must all name a tool and
// carry valid arguments, and schemas that cannot be compiled fail the request alone.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import Ajv2020 from "ajv/dist/2020";
import { toolCallConstraint } from "../../src/constraint-spec";
import { ConstraintCompiler } from "../../src/engine/constraint";
import { modelInfo } from "../../src/engine/engine";
import { runAlone, Sequence } from "../../src/engine/sequence";
import type {
  ConstraintSpec,
  FinishReason,
  JsonSchema,
  FromEngine,
  ModelInfo,
  SamplingSettings,
} from "../../src/engine-ipc";
import { toKvparkError } from "../../src/errors";
import { generateModel } from "../../src/model-gen/generate";
import { loadModel, type LoadedModel } from "../../src/model/loader";
import { ModelTokenizer } from "../../src/model/tokenizer";

const SAMPLES = 100;
const ajv = new Ajv2020({ strict: false, allErrors: true });

interface Output {
  text: string;
  ids: number[];
  reason?: FinishReason;
  error?: { code: string; message: string };
  started: boolean;
}

let dir: string;
let model: LoadedModel;
let tokenizer: ModelTokenizer;
let info: ModelInfo;
let prompt: number[];
let nextId = 1;

beforeAll(async () => {
  dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-constrained-")), "tiny");
  await generateModel("tiny", dir);
  model = await loadModel(dir);
  tokenizer = ModelTokenizer.fromDir(dir);
  info = modelInfo("tiny", dir, model);
  prompt = tokenizer.renderAndEncode([{ role: "user", content: "Answer with JSON, please." }], {
    addGenerationPrompt: true,
  }).ids;
});

afterAll(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

/** Runs one Generate through a Sequence, as the engine's scheduler does. */
async function generate(sampling: Partial<SamplingSettings>, tokens = prompt): Promise<Output> {
  const msgs: FromEngine[] = [];
  const req = {
    type: "generate" as const,
    id: nextId++,
    tokens,
    sampling: { maxTokens: 64, temperature: 1, topP: 1, topK: 0, seed: 0, stop: [], ...sampling },
    persist: false,
    tenant: "t",
    arrivedAt: Date.now(),
    keepOutputMarkers: false,
  };
  const seq = new Sequence(req, model, tokenizer, info, undefined, (m) => msgs.push(m));
  const out: Output = { text: "", ids: [], started: false };
  try {
    await runAlone(seq, model, 64);
  } catch (err) {
    const e = toKvparkError(err);
    out.error = { code: e.code, message: e.message };
  }
  for (const m of msgs) {
    if (m.type === "started") out.started = true;
    if (m.type === "delta") {
      out.text += m.text;
      out.ids.push(...m.tokenIds);
    }
    if (m.type === "finished") out.reason = m.reason;
  }
  return out;
}

/** Generates SAMPLES outputs with seeds 0, 1, ... at temperature 1. */
async function samples(constraint: ConstraintSpec, maxTokens: number): Promise<Output[]> {
  const outs: Output[] = [];
  for (let seed = 0; seed < SAMPLES; seed++) outs.push(await generate({ constraint, maxTokens, seed }));
  return outs;
}

const SCHEMAS: Record<string, JsonSchema> = {
  "nested objects, required fields, every scalar type": {
    type: "object",
    properties: {
      name: { type: "string", minLength: 1, maxLength: 12 },
      age: { type: "integer", minimum: 0, maximum: 130 },
      member: { type: "boolean" },
      role: { enum: ["admin", "user", "guest"] },
      score: { type: "number", minimum: -1, maximum: 1 },
      address: {
        type: "object",
        properties: {
          city: { type: "string", maxLength: 10 },
          zip: { type: "string", pattern: "^[0-9]{5}$" },
        },
        required: ["city", "zip"],
      },
    },
    required: ["name", "age", "member", "role", "address"],
  },
  "arrays with min and max items, exclusive bounds": {
    type: "object",
    properties: {
      tags: { type: "array", items: { type: "string", maxLength: 6 }, minItems: 1, maxItems: 4 },
      matrix: {
        type: "array",
        items: {
          type: "array",
          items: { type: "integer", minimum: 0, maximum: 9 },
          minItems: 2,
          maxItems: 2,
        },
        minItems: 1,
        maxItems: 3,
      },
      flags: { type: "array", items: { type: "boolean" }, maxItems: 3 },
      ratio: { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 },
      offset: { type: "integer", exclusiveMinimum: -10, maximum: -3 },
    },
    required: ["tags", "matrix", "ratio", "offset"],
  },
  "a list of enums, nulls and $ref'd objects": {
    type: "array",
    items: { anyOf: [{ type: "null" }, { enum: [1, "two", true] }, { $ref: "#/$defs/point" }] },
    minItems: 2,
    maxItems: 5,
    $defs: {
      point: {
        type: "object",
        properties: {
          x: { type: "integer", minimum: -5, maximum: 5 },
          label: { type: ["string", "null"], maxLength: 4 },
        },
        required: ["x"],
        additionalProperties: false,
      },
    },
  },
};

describe("response_format json_schema", () => {
  test.each(Object.entries(SCHEMAS))("%s: every seeded output is valid", async (_, schema) => {
    const validate = ajv.compile(schema);
    const outs = await samples({ kind: "json_schema", schema, strict: true }, 160);
    const invalid = outs.filter((o) => {
      if (o.reason !== "eos") return true;
      try {
        return !validate(JSON.parse(o.text));
      } catch {
        return true;
      }
    });
    expect(invalid).toEqual([]);
    // Different seeds explore different outputs.
    expect(new Set(outs.map((o) => o.text)).size).toBeGreaterThan(SAMPLES / 2);
  });

  test("the same seed gives the same output; greedy decoding is constrained too", async () => {
    const constraint: ConstraintSpec = {
      kind: "json_schema",
      schema: Object.values(SCHEMAS)[0],
      strict: true,
    };
    const a = await generate({ constraint, maxTokens: 160, seed: 42 });
    const b = await generate({ constraint, maxTokens: 160, seed: 42 });
    expect(b.ids).toEqual(a.ids);
    const greedy = await generate({ constraint, maxTokens: 160, temperature: 0 });
    expect(greedy.reason).toBe("eos");
    expect(ajv.validate(Object.values(SCHEMAS)[0], JSON.parse(greedy.text))).toBe(true);
    expect((await generate({ constraint, maxTokens: 160, temperature: 0 })).ids).toEqual(greedy.ids);
  });

  test("too few tokens to finish: max_tokens, and the text is a prefix of valid JSON", async () => {
    const out = await generate({
      constraint: { kind: "json_schema", schema: Object.values(SCHEMAS)[0], strict: true },
      maxTokens: 4,
    });
    expect(out.reason).toBe("max_tokens");
    expect(out.ids).toHaveLength(4);
    const start = '{"name": "';
    expect(start.startsWith(out.text) || out.text.startsWith(start)).toBe(true);
  });

  test("a compiled schema is reused by the next request with the same schema", async () => {
    const compiler = ConstraintCompiler.forModel(info.dir, info.vocabSize, tokenizer.eosIds);
    const schema = {
      type: "object",
      properties: { n: { type: "integer", minimum: 0, maximum: 3 } },
      required: ["n"],
    };
    await generate({ constraint: { kind: "json_schema", schema, strict: false } });
    const { compiled, reused } = compiler.stats;
    await generate({ constraint: { kind: "json_schema", schema: { ...schema }, strict: false } });
    expect(compiler.stats).toMatchObject({ compiled, reused: reused + 1 });
  });
});

describe("response_format json_object", () => {
  test("outputs are JSON objects, or prefixes of one when max_tokens cuts them", async () => {
    const outs = await samples({ kind: "json_object" }, 96);
    for (const o of outs) {
      expect(o.text.startsWith("{")).toBe(true);
      if (o.reason === "eos") {
        const value = JSON.parse(o.text);
        expect(typeof value === "object" && value !== null && !Array.isArray(value)).toBe(true);
      } else expect(o.reason).toBe("max_tokens");
    }
    expect(outs.filter((o) => o.reason === "eos").length).toBeGreaterThan(0);
  });
});

describe("forced tool calls (Hermes)", () => {
  const TOOLS = {
    get_weather: {
      type: "object",
      properties: {
        city: { type: "string", minLength: 1, maxLength: 12 },
        unit: { enum: ["celsius", "fahrenheit"] },
      },
      required: ["city", "unit"],
    },
    add: {
      type: "object",
      properties: {
        a: { type: "integer", minimum: -100, maximum: 100 },
        b: { type: "integer", minimum: -100, maximum: 100 },
      },
      required: ["a", "b"],
    },
    search: {
      type: "object",
      properties: {
        query: { type: "string", maxLength: 16 },
        limit: { type: "integer", minimum: 1, maximum: 20 },
        filters: {
          type: "object",
          properties: { lang: { enum: ["en", "de", "fr"] }, safe: { type: "boolean" } },
          required: ["safe"],
        },
      },
      required: ["query"],
    },
  };
  const tools = Object.entries(TOOLS).map(([name, schema]) => ({
    name,
    parametersJson: JSON.stringify(schema),
  }));
  const validators = new Map(Object.entries(TOOLS).map(([name, schema]) => [name, ajv.compile(schema)]));
  /** The calls of a Hermes answer, or the reason it is not one. */
  function calls(text: string): { name: string; arguments: unknown }[] | string {
    const parts = text.split("\n<tool_call>\n");
    if (!parts[0].startsWith("<tool_call>\n")) return `no <tool_call> at the start: ${text}`;
    parts[0] = parts[0].slice("<tool_call>\n".length);
    const out = [];
    for (const part of parts) {
      if (!part.endsWith("\n</tool_call>")) return `a call does not end with </tool_call>: ${text}`;
      out.push(JSON.parse(part.slice(0, -"\n</tool_call>".length)));
    }
    return out;
  }

  const invalidCalls = (outs: Output[], named?: (seed: number) => string) =>
    outs.flatMap((o, seed) => {
      if (o.reason !== "eos") return [`seed ${seed}: ${o.reason} ${o.error?.message ?? ""}`];
      const cs = calls(o.text);
      if (typeof cs === "string") return [cs];
      if (named && cs.length !== 1) return [`seed ${seed}: ${cs.length} calls`];
      return cs.flatMap((c) => {
        const validate = validators.get(c.name);
        if (!validate || (named && c.name !== named(seed))) return [`seed ${seed}: tool ${c.name}`];
        return validate(c.arguments) ? [] : [`seed ${seed}: ${JSON.stringify(c)}`];
      });
    });

  test("tool_choice named: exactly one call of that tool, arguments valid", async () => {
    const names = Object.keys(TOOLS);
    const outs: Output[] = [];
    for (let seed = 0; seed < SAMPLES; seed++) {
      const constraint = toolCallConstraint("hermes", tools, { name: names[seed % names.length] });
      outs.push(await generate({ constraint, maxTokens: 160, seed }));
    }
    expect(invalidCalls(outs, (seed) => names[seed % names.length])).toEqual([]);
  });

  test("tool_choice required: one call or more, each of a known tool with valid arguments", async () => {
    const constraint = toolCallConstraint("hermes", tools, "required");
    const outs: Output[] = [];
    for (let seed = 0; seed < SAMPLES; seed++)
      outs.push(await generate({ constraint, maxTokens: 1000, seed }));
    expect(invalidCalls(outs)).toEqual([]);
    const used = new Set(outs.flatMap((o) => (calls(o.text) as { name: string }[]).map((c) => c.name)));
    expect([...used].sort()).toEqual(Object.keys(TOOLS).sort());
  });
});

describe("schemas that cannot be enforced", () => {
  const FIELD = "sampling.response_format.json_schema.schema_json";

  test.each([
    [{ type: "foo" }, false, `${FIELD}: unknown type "foo" at the top level`],
    [
      { type: "string", pattern: "(?<=a)b" },
      false,
      `${FIELD}: cannot be compiled into a grammar: unsupported regex: Lookbehind is not supported yet.`,
    ],
    [
      { type: "object", properties: { n: { type: "integer", multipleOf: 3 } } },
      true,
      `${FIELD}: multipleOf at properties.n cannot be enforced while decoding; remove it or set strict to false`,
    ],
  ])("%j (strict %s) fails the request alone with INVALID_ARGUMENT", async (schema, strict, message) => {
    const out = await generate({ constraint: { kind: "json_schema", schema, strict } });
    expect(out.error).toEqual({ code: "INVALID_ARGUMENT", message });
    expect(out.started).toBe(false);
    // The engine goes on serving, constrained requests included.
    const next = await generate({ constraint: { kind: "json_object" }, temperature: 0, maxTokens: 8 });
    expect(next.error).toBeUndefined();
    expect(next.text.startsWith("{")).toBe(true);
  });

  test("without strict, what cannot be enforced is left out", async () => {
    const schema = {
      type: "object",
      properties: { n: { type: "integer", minimum: 0, maximum: 9, multipleOf: 3 } },
      required: ["n"],
    };
    const out = await generate({ constraint: { kind: "json_schema", schema, strict: false }, maxTokens: 32 });
    expect(out.reason).toBe("eos");
    expect(JSON.parse(out.text)).toEqual({ n: expect.any(Number) });
  });

  test("a tool's schema that cannot be compiled names its parameters_json", async () => {
    const constraint = toolCallConstraint(
      "hermes",
      [
        { name: "ok", parametersJson: "" },
        {
          name: "bad",
          parametersJson: JSON.stringify({
            type: "object",
            properties: { p: { type: "string", pattern: "a(?=b)" } },
          }),
        },
      ],
      "required",
    );
    const out = await generate({ constraint });
    expect(out.error).toEqual({
      code: "INVALID_ARGUMENT",
      message:
        "prompt.chat.tools[1].parameters_json: cannot be compiled into a grammar: unsupported regex: Lookahead is not supported yet.",
    });
  });
});
