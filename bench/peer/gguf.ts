/**
 * A small GGUF v3 writer, and the random-weight llama.cpp twin of a kvpark Qwen2 preset.
 *
 * GGUF layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), all little-endian:
 *   "GGUF" | version u32 = 3 | tensor count u64 | metadata count u64
 *   metadata: key (u64 length + UTF-8) | value type u32 | value (arrays: element type u32, count u64, items)
 *   tensor infos: name | n_dims u32 | dims u64[n_dims] (ggml order: innermost first) | ggml type u32 |
 *     offset u64 (from the start of the data section, a multiple of the alignment)
 *   zero padding to the alignment, then each tensor's bytes, each padded to the alignment.
 */
import * as fs from "node:fs";
import * as path from "node:path";

const GGUF_MAGIC = "GGUF";
const GGUF_VERSION = 3;
/** llama.cpp's default; written to general.alignment too. */
export const GGUF_ALIGNMENT = 32;

/** GGUF metadata value types. */
enum ValueType {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
}

/** ggml tensor types this writer produces. */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
}

const BYTES_PER_ELEMENT: Record<GgmlType, number> = { [GgmlType.F32]: 4, [GgmlType.F16]: 2 };

type Metadata =
  | { type: "u32"; value: number }
  | { type: "i32"; value: number }
  | { type: "f32"; value: number }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "string[]"; value: readonly string[] }
  | { type: "i32[]"; value: readonly number[] };

/** One tensor: its ggml shape (innermost dimension first) and a function that fills its bytes. */
export interface TensorSpec {
  name: string;
  dims: number[];
  type: GgmlType;
  /** Writes elements [start, start + out.length / bytesPerElement) of the tensor into `out`. */
  fill: (out: Buffer, startElement: number) => void;
}

/** Grows a byte buffer of the header as values are appended. */
class ByteSink {
  private buf = Buffer.alloc(1 << 20);
  length = 0;
  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u32(v: number): void {
    this.reserve(4);
    this.length = this.buf.writeUInt32LE(v, this.length);
  }
  i32(v: number): void {
    this.reserve(4);
    this.length = this.buf.writeInt32LE(v, this.length);
  }
  u64(v: number): void {
    this.reserve(8);
    this.length = this.buf.writeBigUInt64LE(BigInt(v), this.length);
  }
  f32(v: number): void {
    this.reserve(4);
    this.length = this.buf.writeFloatLE(v, this.length);
  }
  u8(v: number): void {
    this.reserve(1);
    this.length = this.buf.writeUInt8(v, this.length);
  }
  string(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.reserve(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.reserve(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

function tensorBytes(t: TensorSpec): number {
  return t.dims.reduce((a, b) => a * b, 1) * BYTES_PER_ELEMENT[t.type];
}

/** Collects metadata and tensors, then writes a GGUF v3 file in one pass. */
export class GgufWriter {
  private readonly metadata = new Map<string, Metadata>();
  private readonly tensors: TensorSpec[] = [];

  set(key: string, value: Metadata): this {
    this.metadata.set(key, value);
    return this;
  }

  addTensor(t: TensorSpec): this {
    if (this.tensors.some((x) => x.name === t.name)) throw new Error(`duplicate tensor ${t.name}`);
    if (t.dims.length < 1 || t.dims.length > 4 || t.dims.some((d) => !Number.isInteger(d) || d < 1))
      throw new Error(`tensor ${t.name}: bad dims ${t.dims.join("x")}`);
    this.tensors.push(t);
    return this;
  }

  private header(): Buffer {
    const s = new ByteSink();
    for (const c of GGUF_MAGIC) s.u8(c.charCodeAt(0));
    s.u32(GGUF_VERSION);
    s.u64(this.tensors.length);
    s.u64(this.metadata.size);
    for (const [key, m] of this.metadata) {
      s.string(key);
      switch (m.type) {
        case "u32":
          s.u32(ValueType.U32);
          s.u32(m.value);
          break;
        case "i32":
          s.u32(ValueType.I32);
          s.i32(m.value);
          break;
        case "f32":
          s.u32(ValueType.F32);
          s.f32(m.value);
          break;
        case "bool":
          s.u32(ValueType.BOOL);
          s.u8(m.value ? 1 : 0);
          break;
        case "string":
          s.u32(ValueType.STRING);
          s.string(m.value);
          break;
        case "string[]":
          s.u32(ValueType.ARRAY);
          s.u32(ValueType.STRING);
          s.u64(m.value.length);
          for (const v of m.value) s.string(v);
          break;
        case "i32[]":
          s.u32(ValueType.ARRAY);
          s.u32(ValueType.I32);
          s.u64(m.value.length);
          for (const v of m.value) s.i32(v);
          break;
      }
    }
    let offset = 0;
    for (const t of this.tensors) {
      s.string(t.name);
      s.u32(t.dims.length);
      for (const d of t.dims) s.u64(d);
      s.u32(t.type);
      s.u64(offset);
      offset = alignUp(offset + tensorBytes(t), GGUF_ALIGNMENT);
    }
    s.pad(GGUF_ALIGNMENT);
    return s.bytes();
  }

  /** Writes the file (tmp + rename) and returns its size in bytes. */
  write(file: string): number {
    const header = this.header();
    const tmp = `${file}.tmp`;
    const fd = fs.openSync(tmp, "w");
    try {
      fs.writeSync(fd, header);
      let written = header.length;
      const chunk = Buffer.alloc(16 << 20);
      for (const t of this.tensors) {
        const bpe = BYTES_PER_ELEMENT[t.type];
        const total = tensorBytes(t);
        for (let done = 0; done < total;) {
          const n = Math.min(chunk.length - (chunk.length % bpe), total - done);
          const out = chunk.subarray(0, n);
          t.fill(out, done / bpe);
          fs.writeSync(fd, out);
          done += n;
        }
        const pad = alignUp(total, GGUF_ALIGNMENT) - total;
        if (pad) fs.writeSync(fd, Buffer.alloc(pad));
        written += total + pad;
      }
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, file);
      return written;
    } catch (err) {
      fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
      throw err;
    }
  }
}

/** IEEE half-precision bits of a float32 (round to nearest even; subnormals flushed to zero). */
export function f16Bits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  const mant = u & 0x7fffff;
  if (exp <= 0) return sign; // too small for a normal half: zero (our weights never need subnormals)
  if (exp >= 31) return sign | 0x7c00; // overflow: infinity
  let h = sign | (exp << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++;
  return h;
}

/** mulberry32: a small seeded generator, enough for weights whose values do not matter. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Random weights without converting half a billion floats: a pool of uniform values is made once
 * (as F16 and F32 bytes), and each tensor copies from it starting at its own seeded offset. Speed
 * depends on shapes, not values, so a repeating pattern costs nothing in honesty.
 */
class WeightPool {
  private static readonly ELEMENTS = (1 << 20) + 4093; // not a power of two, so rows do not line up
  readonly f16: Buffer;
  readonly f32: Buffer;
  constructor(seed: number, halfWidth: number) {
    const next = rng(seed);
    // Twice the pool, so a copy of up to ELEMENTS elements never wraps.
    this.f16 = Buffer.alloc(WeightPool.ELEMENTS * 2 * 2);
    this.f32 = Buffer.alloc(WeightPool.ELEMENTS * 2 * 4);
    for (let i = 0; i < WeightPool.ELEMENTS; i++) {
      const v = (next() * 2 - 1) * halfWidth;
      const h = f16Bits(v);
      this.f16.writeUInt16LE(h, 2 * i);
      this.f16.writeUInt16LE(h, 2 * (i + WeightPool.ELEMENTS));
      this.f32.writeFloatLE(v, 4 * i);
      this.f32.writeFloatLE(v, 4 * (i + WeightPool.ELEMENTS));
    }
  }
  /** A fill function for one tensor, starting at a pool offset derived from `salt`. */
  filler(type: GgmlType, salt: number): TensorSpec["fill"] {
    const src = type === GgmlType.F16 ? this.f16 : this.f32;
    const bpe = BYTES_PER_ELEMENT[type];
    const n = WeightPool.ELEMENTS;
    const start = Math.floor(rng(salt)() * n);
    return (out, startElement) => {
      for (let o = 0; o < out.length;) {
        const at = (start + startElement + o / bpe) % n;
        const count = Math.min(n, (out.length - o) / bpe);
        src.copy(out, o, at * bpe, (at + count) * bpe);
        o += count * bpe;
      }
    };
  }
}

function ones(type: GgmlType): TensorSpec["fill"] {
  return (out) => {
    if (type === GgmlType.F32) for (let i = 0; i < out.length; i += 4) out.writeFloatLE(1, i);
    else for (let i = 0; i < out.length; i += 2) out.writeUInt16LE(0x3c00, i);
  };
}

/** What describeGguf returns: the file and the figures the peer section reports. */
export interface GgufModel {
  file: string;
  fileBytes: number;
  vocabSize: number;
  tokenizerTokens: number;
  /** Elements of all weight tensors (the tied embedding counted once). */
  parameters: number;
  writeSeconds: number;
}

interface TokenizerJson {
  added_tokens: { id: number; content: string; special: boolean }[];
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
}

/** llama.cpp token types (llama_token_type). */
const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const;

/**
 * Writes a GGUF of a kvpark Qwen2 model directory's shape (config.json) and vocabulary
 * (tokenizer.json), with random F16 weights, F32 norms and biases, and the embedding tied to the
 * output like Qwen2.5-0.5B. The token list is padded to the model's vocab_size with unused
 * "[PAD<i>]" entries, as llama.cpp's own converter does for Qwen.
 */
export function writeQwen2Gguf(modelDir: string, file: string, seed = 0): GgufModel {
  const started = performance.now();
  const config = JSON.parse(fs.readFileSync(path.join(modelDir, "config.json"), "utf8")) as Record<
    string,
    number | string | boolean
  >;
  if (config.model_type !== "qwen2") throw new Error(`GGUF twin: model_type ${String(config.model_type)}`);
  if (config.tie_word_embeddings !== true) throw new Error("GGUF twin: only tied embeddings are written");
  const tok = JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer.json"), "utf8")) as TokenizerJson;
  if (tok.model.type !== "BPE") throw new Error(`GGUF twin: tokenizer ${tok.model.type}`);

  const hidden = Number(config.hidden_size);
  const layers = Number(config.num_hidden_layers);
  const heads = Number(config.num_attention_heads);
  const kvHeads = Number(config.num_key_value_heads);
  const ffn = Number(config.intermediate_size);
  const vocab = Number(config.vocab_size);
  const headDim = hidden / heads;
  const kvDim = kvHeads * headDim;

  // Token list: the BPE vocabulary, then added tokens at their ids, then padding.
  const tokens: string[] = new Array<string>(vocab);
  const types: number[] = new Array<number>(vocab).fill(TOKEN_TYPE.UNUSED);
  for (const [text, id] of Object.entries(tok.model.vocab)) {
    tokens[id] = text;
    types[id] = TOKEN_TYPE.NORMAL;
  }
  for (const t of tok.added_tokens) {
    tokens[t.id] = t.content;
    types[t.id] = t.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
  }
  const tokenizerTokens = tokens.filter((t) => t !== undefined).length;
  for (let i = 0; i < vocab; i++) if (tokens[i] === undefined) tokens[i] = `[PAD${i}]`;
  const merges = tok.model.merges.map((m) => (Array.isArray(m) ? m.join(" ") : m));

  const w = new GgufWriter()
    .set("general.architecture", { type: "string", value: "qwen2" })
    .set("general.name", { type: "string", value: `kvpark random twin of ${path.basename(modelDir)}` })
    .set("general.alignment", { type: "u32", value: GGUF_ALIGNMENT })
    .set("general.file_type", { type: "u32", value: 1 }) // LLAMA_FTYPE_MOSTLY_F16
    .set("qwen2.context_length", { type: "u32", value: Number(config.max_position_embeddings) })
    .set("qwen2.embedding_length", { type: "u32", value: hidden })
    .set("qwen2.block_count", { type: "u32", value: layers })
    .set("qwen2.feed_forward_length", { type: "u32", value: ffn })
    .set("qwen2.attention.head_count", { type: "u32", value: heads })
    .set("qwen2.attention.head_count_kv", { type: "u32", value: kvHeads })
    .set("qwen2.rope.freq_base", { type: "f32", value: Number(config.rope_theta) })
    .set("qwen2.attention.layer_norm_rms_epsilon", { type: "f32", value: Number(config.rms_norm_eps) })
    .set("tokenizer.ggml.model", { type: "string", value: "gpt2" })
    .set("tokenizer.ggml.pre", { type: "string", value: "qwen2" })
    .set("tokenizer.ggml.tokens", { type: "string[]", value: tokens })
    .set("tokenizer.ggml.token_type", { type: "i32[]", value: types })
    .set("tokenizer.ggml.merges", { type: "string[]", value: merges })
    .set("tokenizer.ggml.bos_token_id", { type: "u32", value: Number(config.bos_token_id) })
    .set("tokenizer.ggml.eos_token_id", { type: "u32", value: Number(config.eos_token_id) })
    .set("tokenizer.ggml.padding_token_id", { type: "u32", value: Number(config.bos_token_id) })
    .set("tokenizer.ggml.add_bos_token", { type: "bool", value: false });

  // U(-a, a) with std 0.02, like kvpark's generator (checkpoint.ts INIT_STD).
  const pool = new WeightPool(seed, 0.02 * Math.sqrt(3));
  let salt = seed * 1000 + 1;
  let parameters = 0;
  const add = (name: string, dims: number[], type: GgmlType, fill?: TensorSpec["fill"]) => {
    w.addTensor({ name, dims, type, fill: fill ?? pool.filler(type, salt++) });
    parameters += dims.reduce((a, b) => a * b, 1);
  };
  // ggml dims are innermost first: a Hugging Face [out, in] weight is [in, out] here.
  add("token_embd.weight", [hidden, vocab], GgmlType.F16);
  for (let l = 0; l < layers; l++) {
    const b = `blk.${l}`;
    add(`${b}.attn_norm.weight`, [hidden], GgmlType.F32, ones(GgmlType.F32));
    add(`${b}.attn_q.weight`, [hidden, hidden], GgmlType.F16);
    add(`${b}.attn_q.bias`, [hidden], GgmlType.F32);
    add(`${b}.attn_k.weight`, [hidden, kvDim], GgmlType.F16);
    add(`${b}.attn_k.bias`, [kvDim], GgmlType.F32);
    add(`${b}.attn_v.weight`, [hidden, kvDim], GgmlType.F16);
    add(`${b}.attn_v.bias`, [kvDim], GgmlType.F32);
    add(`${b}.attn_output.weight`, [hidden, hidden], GgmlType.F16);
    add(`${b}.ffn_norm.weight`, [hidden], GgmlType.F32, ones(GgmlType.F32));
    add(`${b}.ffn_gate.weight`, [hidden, ffn], GgmlType.F16);
    add(`${b}.ffn_up.weight`, [hidden, ffn], GgmlType.F16);
    add(`${b}.ffn_down.weight`, [ffn, hidden], GgmlType.F16);
  }
  add("output_norm.weight", [hidden], GgmlType.F32, ones(GgmlType.F32));
  // No output.weight: llama.cpp's qwen2 loader then reuses token_embd for the output (tied).

  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fileBytes = w.write(file);
  return {
    file,
    fileBytes,
    vocabSize: vocab,
    tokenizerTokens,
    parameters,
    writeSeconds: (performance.now() - started) / 1000,
  };
}
