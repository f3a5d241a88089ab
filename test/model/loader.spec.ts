import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { ModelError } from "../../src/model/errors";
import { modelFingerprint } from "../../src/model/fingerprint";
import { type LoadedModel, loadModel } from "../../src/model/loader";
import { PRESETS } from "../../src/model-gen/presets";
import { parseModelConfig } from "../../src/model/config";
import { ARCHITECTURE_CASES, TINY } from "./architectures";
import { maxAbsDiff, removeTempDirs, tempDir, writeDequantizedTwin } from "./helpers";

const TOKENS = [3, 141, 59, 265, 358, 97, 93, 238, 46, 264, 338, 327];

afterAll(removeTempDirs);

/** The tiny preset written with `opts` into a fresh directory. */
async function tiny(opts: Parameters<typeof writeRandomCheckpoint>[1] = {}): Promise<string> {
  const dir = tempDir();
  await writeRandomCheckpoint(dir, { preset: "tiny", seed: 7, ...opts });
  return dir;
}

function logits(model: LoadedModel): mx.array {
  const out = model.forward(TOKENS, model.newCache(), { logits: "all" });
  mx.eval(out);
  return out;
}

function sha256(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/** Runs `f` and returns the ModelError it throws (failing the test if it throws anything else). */
async function modelError(f: () => Promise<unknown>): Promise<ModelError> {
  try {
    await f();
  } catch (err) {
    expect(err).toBeInstanceOf(ModelError);
    return err as ModelError;
  }
  throw new Error("expected a ModelError");
}

describe("checkpoint variants", () => {
  let plainDir: string;
  let plain: mx.array;

  beforeAll(async () => {
    plainDir = await tiny();
    plain = logits(await loadModel(plainDir));
  });

  test("the same options write the same bytes", async () => {
    const again = await tiny();
    for (const file of fs.readdirSync(plainDir)) {
      expect(sha256(path.join(again, file))).toBe(sha256(path.join(plainDir, file)));
    }
  });

  test("the tiny preset's config.json", () => {
    const config = JSON.parse(fs.readFileSync(path.join(plainDir, "config.json"), "utf8"));
    expect(config).toMatchObject({
      model_type: "qwen2",
      hidden_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 517,
      tie_word_embeddings: true,
      bos_token_id: 512,
      eos_token_id: 514,
      torch_dtype: "float32",
    });
  });

  test("a sharded checkpoint loads and computes the same logits", async () => {
    const dir = await tiny({ shards: 3 });
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors"))).toEqual([
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
    ]);
    const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8"));
    expect(new Set(Object.values(index.weight_map)).size).toBe(3);
    expect(maxAbsDiff(logits(await loadModel(dir)), plain)).toBe(0);
  });

  test("a bfloat16 checkpoint loads as its float32 weights rounded to bfloat16", async () => {
    const dir = await tiny({ dtype: "bfloat16" });
    const bf16 = await loadModel(dir);
    const f32 = await loadModel(plainDir);
    const expected = new Map(f32.model.namedParameters());
    for (const [name, weight] of bf16.model.namedParameters()) {
      expect(weight.dtype).toBe(mx.float32);
      const rounded = expected.get(name)!.astype(mx.bfloat16).astype(mx.float32);
      expect(mx.arrayEqual(weight, rounded).item()).toBe(true);
    }
    expect(maxAbsDiff(logits(bf16), plain)).toBeLessThan(0.02);
  });

  test.each([4, 8] as const)("a %i-bit quantized checkpoint equals its dequantized twin", async (bits) => {
    const dir = await tiny({ quantizeBits: bits });
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    expect(config.quantization).toEqual({ group_size: 64, bits });
    const tensors = mx.load(path.join(dir, "model.safetensors")) as unknown as Record<string, mx.array>;
    expect(tensors["model.layers.0.mlp.down_proj.weight"].dtype).toBe(mx.uint32);
    expect(tensors["model.layers.0.mlp.down_proj.weight"].shape).toEqual([64, (128 * bits) / 32]);
    expect(tensors["model.embed_tokens.scales"].shape).toEqual([517, 1]);

    const twinDir = tempDir();
    writeDequantizedTwin(dir, twinDir);
    const quantized = logits(await loadModel(dir));
    expect(maxAbsDiff(quantized, logits(await loadModel(twinDir)))).toBe(0);
    // Quantization error stays below the logits' spread (std about 0.17): the packing is sound.
    expect(maxAbsDiff(quantized, plain)).toBeLessThan(bits === 8 ? 0.01 : 0.1);
  });

  test("the qwen2.5-0.5b preset has Qwen2.5-0.5B's shape", () => {
    const preset = PRESETS["qwen2.5-0.5b"];
    expect(preset.vocabSize).toBe(151936);
    expect(preset.config).toMatchObject({
      model_type: "qwen2",
      num_hidden_layers: 24,
      hidden_size: 896,
      num_attention_heads: 14,
      num_key_value_heads: 2,
      intermediate_size: 4864,
      tie_word_embeddings: true,
      rope_theta: 1000000,
      max_position_embeddings: 32768,
    });
    expect(preset.config.head_dim ?? 896 / 14).toBe(64);
  });

  test("progress is reported up to the total weight bytes", async () => {
    const seen: [number, number][] = [];
    await loadModel(plainDir, { onProgress: (loaded, total) => seen.push([loaded, total]) });
    const total = fs.statSync(path.join(plainDir, "model.safetensors")).size;
    expect(seen[0]).toEqual([0, total]);
    for (let i = 1; i < seen.length; i++) expect(seen[i][0]).toBeGreaterThan(seen[i - 1][0]);
    // Tensor data is everything but the safetensors header; the last report completes the total.
    const headerBytes =
      8 + Number(fs.readFileSync(path.join(plainDir, "model.safetensors")).readBigUInt64LE(0));
    expect(seen[seen.length - 2]).toEqual([total - headerBytes, total]);
    expect(seen[seen.length - 1]).toEqual([total, total]);
  });

  test("generation defaults come from generation_config.json", async () => {
    const model = await loadModel(plainDir);
    expect(model.generation).toEqual({
      bosTokenId: 512,
      eosTokenIds: [514, 512],
      temperature: 0.7,
      topP: 0.8,
      topK: 20,
    });
    fs.rmSync(path.join(plainDir, "generation_config.json"));
    const without = await loadModel(plainDir);
    expect(without.generation).toEqual({
      bosTokenId: 512,
      eosTokenIds: [514],
      temperature: null,
      topP: null,
      topK: null,
    });
  });
});

describe("errors", () => {
  test("a missing directory", async () => {
    const err = await modelError(() => loadModel("/nonexistent/kvpark-model"));
    expect(err.code).toBe("MODEL_FILE_MISSING");
    expect(err.message).toBe("model directory /nonexistent/kvpark-model does not exist");
  });

  test("a missing config.json", async () => {
    const dir = await tiny();
    fs.rmSync(path.join(dir, "config.json"));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_FILE_MISSING");
    expect(err.message).toBe(
      `config.json not found in ${dir}: point --model at a Hugging Face or mlx-community model directory`,
    );
  });

  test("a missing shard", async () => {
    const dir = await tiny({ shards: 3 });
    fs.rmSync(path.join(dir, "model-00002-of-00003.safetensors"));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_FILE_MISSING");
    expect(err.message).toContain(
      "weight shard model-00002-of-00003.safetensors listed in model.safetensors.index.json is missing",
    );
  });

  test("no weights at all", async () => {
    const dir = await tiny();
    fs.rmSync(path.join(dir, "model.safetensors"));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_FILE_MISSING");
    expect(err.message).toBe(
      `no weights in ${dir}: expected model.safetensors, or shards with model.safetensors.index.json`,
    );
  });

  test("a missing tokenizer.json", async () => {
    const dir = await tiny();
    fs.rmSync(path.join(dir, "tokenizer.json"));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_FILE_MISSING");
    expect(err.message).toContain("tokenizer.json not found");
  });

  test("an unknown model_type lists the supported ones", async () => {
    const dir = await tiny();
    editConfig(dir, (c) => ({ ...c, model_type: "gpt2" }));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_UNSUPPORTED");
    expect(err.message).toBe(
      'config.json: model_type "gpt2" is not supported; supported: gemma3_text, llama, mistral, qwen2, qwen3, qwen3_5',
    );
  });

  test("a weight whose shape contradicts config.json", async () => {
    const dir = await tiny();
    editConfig(dir, (c) => ({ ...c, intermediate_size: 96 }));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_INVALID");
    expect(err.message).toBe(
      "tensor model.layers.0.mlp.gate_proj.weight in model.safetensors: expected shape [96, 64] from config.json, got [128, 64]",
    );
  });

  test("a quantized weight whose packing contradicts config.json", async () => {
    const dir = await tiny({ quantizeBits: 4 });
    editConfig(dir, (c) => ({ ...c, quantization: { group_size: 64, bits: 8 } }));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_INVALID");
    expect(err.message).toBe(
      "tensor model.embed_tokens.weight: expected U32 [517, 16] for a 8-bit, group-64 quantization of [517, 64] (config.json), got U32 [517, 8]",
    );
  });

  test("a truncated weight file is refused before MLX reads it", async () => {
    const dir = await tiny();
    const file = path.join(dir, "model.safetensors");
    fs.truncateSync(file, fs.statSync(file).size - 100);
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_INVALID");
    expect(err.message).toMatch(
      /^model\.safetensors: tensor \S+ ends at byte \d+ of a \d+-byte data section \(truncated\?\)/,
    );
  });

  test("a tensor the architecture does not have", async () => {
    const dir = await tiny();
    editConfig(dir, (c) => ({ ...c, model_type: "llama", tie_word_embeddings: true }));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe("MODEL_INVALID");
    expect(err.message).toBe(
      "tensor model.layers.0.self_attn.k_proj.bias in model.safetensors is not a parameter of a llama model with this config.json",
    );
  });

  test.each([
    [
      { num_key_value_heads: 3 },
      "MODEL_INVALID",
      'field "num_key_value_heads" (3) must divide num_attention_heads (4)',
    ],
    [{ hidden_size: -1 }, "MODEL_INVALID", 'field "hidden_size" must be a positive integer, got -1'],
    [
      { rope_scaling: { rope_type: "yarn", factor: 4 } },
      "MODEL_UNSUPPORTED",
      'rope_scaling type "yarn" is not supported',
    ],
    [
      { use_sliding_window: true },
      "MODEL_UNSUPPORTED",
      '"use_sliding_window": true is not supported for model_type "qwen2"',
    ],
    [
      { quantization: { group_size: 64, bits: 3 } },
      "MODEL_UNSUPPORTED",
      '"quantization.bits" is 3; supported: 2, 4, 8',
    ],
  ])("config.json %j", async (change, code, message) => {
    const dir = await tiny();
    editConfig(dir, (c) => ({ ...c, ...change }));
    const err = await modelError(() => loadModel(dir));
    expect(err.code).toBe(code);
    expect(err.message).toContain(message);
  });

  // Hybrid architectures: mixture-of-experts variants and layer kinds kvpark does not run are
  // refused before any weight is read, naming what runs.
  const hybrid = (kind: string) => ({
    ...TINY,
    ...ARCHITECTURE_CASES.find((c) => c.config.model_type === kind)!.config,
    vocab_size: 517,
  });
  test.each([
    [
      "qwen3_5",
      { num_experts: 256, num_experts_per_tok: 8 },
      "MODEL_UNSUPPORTED",
      'config.json: mixture of experts ("num_experts": 256) is not supported for model_type "qwen3_5"; supported: the dense Qwen3.5 models, whose config has no experts',
    ],
    [
      "qwen3_5",
      { moe_intermediate_size: 512 },
      "MODEL_UNSUPPORTED",
      'config.json: mixture of experts ("moe_intermediate_size": 512) is not supported for model_type "qwen3_5"; supported: the dense Qwen3.5 models, whose config has no experts',
    ],
    [
      "qwen3_5",
      { layer_types: ["linear_attention", "full_attention", "mamba", "full_attention"] },
      "MODEL_UNSUPPORTED",
      'config.json: layer type "mamba" (layer 2) is not supported for model_type "qwen3_5"; supported: "linear_attention", "full_attention"',
    ],
    [
      "gemma3_text",
      { layer_types: ["sliding_attention", "chunked_attention", "full_attention"] },
      "MODEL_UNSUPPORTED",
      'config.json: layer type "chunked_attention" (layer 1) is not supported for model_type "gemma3_text"; supported: "sliding_attention", "full_attention"',
    ],
    [
      "qwen3_5",
      { layer_types: ["linear_attention", "full_attention"] },
      "MODEL_INVALID",
      'config.json: field "layer_types" must list one of "linear_attention", "full_attention" for each of the 4 layers',
    ],
  ])("%s config %j", (kind, change, code, message) => {
    let err: unknown;
    try {
      parseModelConfig({ ...hybrid(kind), ...change });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ModelError);
    expect(err).toMatchObject({ code, message });
  });
});

describe("fingerprint", () => {
  test("is stable, independent of the directory's path, and follows the documented framing", async () => {
    const dir = await tiny();
    const first = (await loadModel(dir)).fingerprint;
    expect(first).toMatch(/^[0-9a-f]{64}$/);
    expect((await loadModel(dir)).fingerprint).toBe(first);
    const copy = tempDir();
    for (const f of fs.readdirSync(dir)) fs.copyFileSync(path.join(dir, f), path.join(copy, f));
    expect((await loadModel(copy)).fingerprint).toBe(first);

    const hash = createHash("sha256").update("kvpark-model-fingerprint-v1");
    const frame = (label: string, payload: Buffer) => {
      for (const part of [Buffer.from(label), payload]) {
        const length = Buffer.alloc(8);
        length.writeBigUInt64BE(BigInt(part.length));
        hash.update(length).update(part);
      }
    };
    frame("config.json", fs.readFileSync(path.join(dir, "config.json")));
    const size = Buffer.alloc(8);
    size.writeBigUInt64BE(BigInt(fs.statSync(path.join(dir, "model.safetensors")).size));
    frame(
      "weight:model.safetensors",
      Buffer.concat([size, Buffer.from(sha256(path.join(dir, "model.safetensors")), "hex")]),
    );
    frame("tokenizer.json", fs.readFileSync(path.join(dir, "tokenizer.json")));
    frame("tokenizer_config.json", fs.readFileSync(path.join(dir, "tokenizer_config.json")));
    expect(first).toBe(hash.digest("hex"));
  });

  test("changes with config.json, the weights and the tokenizer files", async () => {
    const dir = await tiny();
    const seen = new Set([await modelFingerprint(dir, ["model.safetensors"])]);
    const changed = async () => {
      const fingerprint = await modelFingerprint(dir, ["model.safetensors"]);
      expect(seen.has(fingerprint)).toBe(false);
      seen.add(fingerprint);
    };
    editConfig(dir, (c) => ({ ...c, rms_norm_eps: 1e-5 }));
    await changed();
    // Same size, different content: new random weights of the same shapes.
    const other = await tiny({ seed: 8 });
    fs.copyFileSync(path.join(other, "model.safetensors"), path.join(dir, "model.safetensors"));
    await changed();
    fs.appendFileSync(path.join(dir, "tokenizer.json"), " ");
    await changed();
    fs.appendFileSync(path.join(dir, "tokenizer_config.json"), " ");
    await changed();
  });

  test("weight digests are remembered in the cache file by path, size and mtime", async () => {
    const dir = await tiny();
    const cacheFile = path.join(tempDir(), "digests.json");
    const fingerprint = (await loadModel(dir, { fingerprintCacheFile: cacheFile })).fingerprint;
    const weights = path.resolve(dir, "model.safetensors");
    const stat = fs.statSync(weights);
    const cached = JSON.parse(fs.readFileSync(cacheFile, "utf8"));
    expect(cached[weights]).toEqual({ size: stat.size, mtimeMs: stat.mtimeMs, sha256: sha256(weights) });
    expect(await modelFingerprint(dir, ["model.safetensors"], cacheFile)).toBe(fingerprint);
  });
});

function editConfig(dir: string, edit: (config: Record<string, unknown>) => Record<string, unknown>): void {
  const file = path.join(dir, "config.json");
  fs.writeFileSync(file, JSON.stringify(edit(JSON.parse(fs.readFileSync(file, "utf8")))));
}
