/**
 * Structured outputs (constrained decoding, src/engine/constraint.ts), in a child process (MLX and
 * xgrammar stay out of the bench process), side by side in one run:
 *
 * - decode: the run's model decoding through the engine's Sequence at temperature 1, seeded, with no
 *   constraint and with each kind of constraint (json_schema, json_object, a Hermes tool call), the
 *   variants taking turns run by run; milliseconds per decoded token, medians;
 * - vocabularies: for the run's model and for a Qwen-sized vocabulary (151,643 byte-level tokens:
 *   the generated tokenizer's plus distinct substrings of its training corpus, 151,936 logits like
 *   Qwen2.5), no forward pass: preparing the vocabulary (once per engine), compiling each kind of
 *   constraint (fresh compiles, and reuse from the cache), and per token, over sampled outputs with
 *   random logits, the grammar's mask (xgrammar, with the UTF-8 guard), masking the logits and
 *   sampling, against sampling alone.
 *
 * Also runnable alone: node --expose-gc dist/bench/sections/constrained.js --child '<options JSON>'.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Progress } from "../lib/util";

export interface ConstrainedOptions {
  modelDir: string;
  preset: string;
  runs: number;
  decodeTokens: number;
  samples: number;
  workDir: string;
}

interface VocabResult {
  name: string;
  strings: number;
  logits: number;
  prepareMs: number;
  compileMs: Record<string, number>;
  reuseMs: number;
  perToken: { tokens: number; grammarMs: number; maskSampleMs: number; sampleMs: number };
}

export interface ConstrainedResult {
  preset: string;
  decodeTokens: number;
  runs: number;
  /** Milliseconds per decoded token, median over runs, by variant. */
  decodeMsPerToken: Record<string, number>;
  vocabularies: VocabResult[];
  table: string;
}

const median = (v: number[]) => {
  const s = v.filter(Number.isFinite).sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const SCHEMA = {
  type: "object",
  properties: {
    title: { type: "string", maxLength: 24 },
    year: { type: "integer", minimum: 1900, maximum: 2100 },
    rating: { type: "number", minimum: 0, maximum: 10 },
    genres: {
      type: "array",
      items: { enum: ["drama", "comedy", "documentary", "thriller"] },
      minItems: 1,
      maxItems: 3,
    },
    cast: {
      type: "array",
      items: {
        type: "object",
        properties: { name: { type: "string", maxLength: 20 }, lead: { type: "boolean" } },
        required: ["name", "lead"],
      },
      minItems: 2,
      maxItems: 4,
    },
  },
  required: ["title", "year", "rating", "genres", "cast"],
};

const TOOLS = [
  {
    name: "get_weather",
    parametersJson: JSON.stringify({
      type: "object",
      properties: { city: { type: "string", maxLength: 24 }, unit: { enum: ["celsius", "fahrenheit"] } },
      required: ["city", "unit"],
    }),
  },
  {
    name: "search",
    parametersJson: JSON.stringify({
      type: "object",
      properties: {
        query: { type: "string", maxLength: 40 },
        limit: { type: "integer", minimum: 1, maximum: 20 },
      },
      required: ["query"],
    }),
  },
  {
    name: "list_files",
    parametersJson: JSON.stringify({ type: "object", properties: { path: { type: "string" } } }),
  },
];

/** Spawns the child and renders its table. */
export function runConstrained(o: ConstrainedOptions & { progress: Progress }): ConstrainedResult {
  o.progress.log(
    `constrained: decode with and without constraints on ${o.preset}, and xgrammar per vocabulary`,
  );
  const out = path.join(o.workDir, "constrained.json");
  const { progress, ...options } = o;
  const r = spawnSync(
    process.execPath,
    ["--expose-gc", __filename, "--child", JSON.stringify({ ...options, out })],
    {
      encoding: "utf8",
      stdio: ["ignore", "inherit", "inherit"],
    },
  );
  if (r.status !== 0) throw new Error("constrained-decoding benchmark failed");
  const result = JSON.parse(fs.readFileSync(out, "utf8")) as Omit<ConstrainedResult, "table">;
  progress.log(`constrained: decode ms/token ${JSON.stringify(result.decodeMsPerToken)}`);
  return { ...result, table: table(result) };
}

const ms = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : "n/a");

function table(r: Omit<ConstrainedResult, "table">): string {
  const d = r.decodeMsPerToken;
  const rows = [
    `Decoding through the engine's Sequence on the ${r.preset} model (temperature 1, seeded, up to ${r.decodeTokens} tokens, ${r.runs} runs per variant taking turns; median ms per token):`,
    "",
    "| unconstrained | json_schema (the film schema) | json_schema, one long string | tool call (Hermes, named) |",
    "| --- | --- | --- | --- |",
    `| ${ms(d.none)} | ${ms(d.json_schema)} (${signed(d.json_schema - d.none)}) | ${ms(d.json_string)} (${signed(d.json_string - d.none)}) | ${ms(d.tool_call)} (${signed(d.tool_call - d.none)}) |`,
    "",
    "The grammar's own costs, without a forward pass (random logits; medians):",
    "",
    "| vocabulary | strings / logits | prepare (first constrained request) | compile: json_schema / tools / json_object | reuse from cache | grammar mask per token | mask logits + sample | sample alone |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const v of r.vocabularies) {
    const c = v.compileMs;
    rows.push(
      `| ${v.name} | ${v.strings.toLocaleString("en-US")} / ${v.logits.toLocaleString("en-US")} | ${ms(v.prepareMs, 0)} ms | ` +
        `${ms(c.json_schema, 0)} / ${ms(c.tool_call, 0)} / ${ms(c.json_object, 0)} ms | ${ms(v.reuseMs)} ms | ` +
        `${ms(v.perToken.grammarMs, 3)} ms | ${ms(v.perToken.maskSampleMs, 3)} ms | ${ms(v.perToken.sampleMs, 3)} ms |`,
    );
  }
  return rows.join("\n");
}

const signed = (x: number) => (Number.isFinite(x) ? `${x >= 0 ? "+" : ""}${x.toFixed(2)}` : "n/a");

// ---- the child ----

/** A Qwen-sized byte-level vocabulary in `dir`/tokenizer.json: the generated tokens, then corpus substrings. */
export async function writeQwenSizedVocab(baseDir: string, dir: string): Promise<{ strings: number }> {
  const { trainingCorpus } = await import("../../src/model-gen/corpus");
  const { byteLevelAlphabet } = await import("../../src/model-gen/tokenizer-gen");
  const base = JSON.parse(fs.readFileSync(path.join(baseDir, "tokenizer.json"), "utf8"));
  const chars = new Map(byteLevelAlphabet().map(({ byte, char }) => [byte, char]));
  const encode = (s: string) => Array.from(Buffer.from(s, "utf8"), (b) => chars.get(b)).join("");
  const regular = 151_643;
  const tokens = new Set<string>(Object.keys(base.model.vocab));
  const words = trainingCorpus()
    .flatMap((doc) => doc.match(/ ?\S+|\s+/g) ?? [])
    .map(encode);
  for (let len = 2; tokens.size < regular && len <= 32; len++) {
    for (const w of words) {
      for (let i = 0; i + len <= w.length && tokens.size < regular; i++) tokens.add(w.slice(i, i + len));
    }
  }
  const vocab = Object.fromEntries([...tokens].map((t, id) => [t, id]));
  const specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map((content, i) => ({
    id: tokens.size + i,
    content,
    special: true,
  }));
  fs.mkdirSync(dir, { recursive: true });
  const json = {
    model: { type: "BPE", vocab, merges: [] },
    added_tokens: specials,
    decoder: { type: "ByteLevel" },
  };
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(json));
  return { strings: tokens.size + specials.length };
}

async function child(opts: ConstrainedOptions & { out: string }): Promise<void> {
  const { core: mx } = await import("@frost-beta/mlx");
  const { toolCallConstraint } = await import("../../src/constraint-spec");
  const { ConstraintCompiler } = await import("../../src/engine/constraint");
  const { Sequence, runAlone } = await import("../../src/engine/sequence");
  const { modelInfo } = await import("../../src/engine/engine");
  const { loadModel } = await import("../../src/model/loader");
  const { Sampler } = await import("../../src/model/sampler");
  const { ModelTokenizer } = await import("../../src/model/tokenizer");
  type Spec = import("../../src/engine-ipc").ConstraintSpec;
  const gc = () => (globalThis as { gc?: () => void }).gc?.();
  const log = (m: string) => process.stderr.write(`  constrained: ${m}\n`);

  const specs = (tag: string): Record<string, Spec> => ({
    json_schema: { kind: "json_schema", schema: { ...SCHEMA, title: tag }, strict: true },
    tool_call: toolCallConstraint(
      "hermes",
      TOOLS.map((t) => ({ ...t, parametersJson: t.parametersJson.replace("{", `{"title":"${tag}",`) })),
      "required",
    ),
    json_object: { kind: "json_object" },
  });

  const model = await loadModel(opts.modelDir);
  const tokenizer = ModelTokenizer.fromDir(opts.modelDir);
  const info = modelInfo(opts.preset, opts.modelDir, model);
  const prompt = tokenizer.renderAndEncode([{ role: "user", content: "Describe a film as JSON." }], {
    addGenerationPrompt: true,
  }).ids;
  // xgrammar's WebAssembly instance starts on its first call: not part of any measurement.
  const { xgrammar } = await import("../../src/engine/xgrammar");
  (await xgrammar().TokenizerInfo.createTokenizerInfo(["a"], "raw", false, 1)).dispose();
  // Vocabularies.
  const vocabs: { name: string; dir: string; logits: number; stops: number[]; strings: number }[] = [
    {
      name: `${opts.preset} (the run's model)`,
      dir: opts.modelDir,
      logits: info.vocabSize,
      stops: [...tokenizer.eosIds],
      strings: tokenizer.vocabSize,
    },
  ];
  if (tokenizer.vocabSize < 100_000) {
    const dir = path.join(opts.workDir, "qwen-sized-vocab");
    const { strings } = await writeQwenSizedVocab(opts.modelDir, dir);
    vocabs.push({
      name: "Qwen-sized (synthetic)",
      dir,
      logits: 151_936,
      stops: [strings - 1, strings - 3],
      strings,
    });
  }
  const vocabularies: VocabResult[] = [];
  for (const v of vocabs) {
    const compiler = ConstraintCompiler.forModel(v.dir, v.logits, v.stops);
    let t0 = performance.now();
    await compiler.prepare();
    const prepareMs = performance.now() - t0;
    const compileMs: Record<string, number> = {};
    for (const kind of Object.keys(specs(""))) {
      const samples: number[] = [];
      for (let r = 0; r < Math.max(3, opts.runs); r++) {
        t0 = performance.now();
        (await compiler.open(specs(`${v.name} ${r}`)[kind])).dispose();
        samples.push(performance.now() - t0);
      }
      // json_object has one spec text: only its first open compiles.
      compileMs[kind] = kind === "json_object" ? samples[0] : median(samples);
    }
    const reuse: number[] = [];
    for (let r = 0; r < 5; r++) {
      t0 = performance.now();
      (await compiler.open(specs(`${v.name} 0`).json_schema)).dispose();
      reuse.push(performance.now() - t0);
    }
    const logits = mx.random.normal([1, v.logits], mx.float32, undefined, undefined, mx.random.key(1));
    mx.eval(logits);
    const grammar: number[] = [];
    const maskSample: number[] = [];
    const plain: number[] = [];
    for (let s = 0; s < opts.samples; s++) {
      const c = await compiler.open(
        s % 2 ? specs(`${v.name} 0`).json_schema : specs(`${v.name} 0`).tool_call,
      );
      // As the engine's: ids past the tokenizer's tokens (padding) are never sampled.
      const sampler = new Sampler({ temperature: 1, seed: s, vocabLimit: v.strings });
      const reference = new Sampler({ temperature: 1, seed: s, vocabLimit: v.strings });
      for (let step = 0; step < 256; step++) {
        let t = performance.now();
        const done = await c.next();
        grammar.push(performance.now() - t);
        if (done) break;
        t = performance.now();
        const token = sampler.sample(c.mask(logits));
        maskSample.push(performance.now() - t);
        t = performance.now();
        reference.sample(logits);
        plain.push(performance.now() - t);
        if (v.stops.includes(token)) break;
        c.accept(token);
      }
      c.dispose();
      gc();
    }
    const result: VocabResult = {
      name: v.name,
      strings: v.strings,
      logits: v.logits,
      prepareMs,
      compileMs,
      reuseMs: median(reuse),
      perToken: {
        tokens: grammar.length,
        grammarMs: median(grammar),
        maskSampleMs: median(maskSample),
        sampleMs: median(plain),
      },
    };
    log(JSON.stringify(result));
    vocabularies.push(result);
  }
  // Decode side by side (after the vocabularies, whose first preparation is measured).
  // JSON mode on a random model mostly closes at once ("{}"); one long string shows the same masks
  // (inside a string, few tokens are refused) over a whole run.
  const decodeSpecs: Record<string, Spec | undefined> = {
    none: undefined,
    json_schema: specs("decode").json_schema,
    json_string: {
      kind: "json_schema",
      schema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
      strict: true,
    },
    tool_call: toolCallConstraint("hermes", TOOLS, { name: "search" }),
  };
  const perToken: Record<string, number[]> = Object.fromEntries(Object.keys(decodeSpecs).map((k) => [k, []]));
  const names = Object.keys(decodeSpecs);
  for (let run = -1; run < opts.runs; run++) {
    for (let i = 0; i < names.length; i++) {
      const name = names[(i + Math.max(run, 0)) % names.length];
      let finished: { timings: { decodeTokensPerSecond: number } } | undefined;
      const req = {
        type: "generate" as const,
        id: run * 100 + i + 1000,
        tokens: prompt,
        sampling: {
          maxTokens: opts.decodeTokens,
          temperature: 1,
          topP: 1,
          topK: 0,
          seed: run + 1,
          stop: [],
          constraint: decodeSpecs[name],
        },
        persist: false,
        tenant: "bench",
        arrivedAt: performance.timeOrigin + performance.now(),
        keepOutputMarkers: false,
      };
      const seq = new Sequence(req, model, tokenizer, info, undefined, (m) => {
        if (m.type === "finished") finished = m;
      });
      await runAlone(seq, model, 512);
      gc();
      const tps = finished?.timings.decodeTokensPerSecond ?? 0;
      if (run >= 0 && tps > 0) perToken[name].push(1000 / tps); // run -1 warms up (and compiles)
    }
  }
  const decodeMsPerToken = Object.fromEntries(names.map((n) => [n, median(perToken[n])]));
  log(`decode ms/token ${JSON.stringify(decodeMsPerToken)}`);

  const result = {
    preset: opts.preset,
    decodeTokens: opts.decodeTokens,
    runs: opts.runs,
    decodeMsPerToken,
    vocabularies,
  };
  fs.writeFileSync(opts.out, JSON.stringify(result, null, 2));
}

if (require.main === module) {
  const i = process.argv.indexOf("--child");
  if (i < 0) {
    process.stderr.write("usage: node --expose-gc constrained.js --child '<options JSON>'\n");
    process.exit(2);
  }
  child(JSON.parse(process.argv[i + 1])).catch((err) => {
    process.stderr.write(`${(err as Error).stack}\n`);
    process.exit(1);
  });
}
