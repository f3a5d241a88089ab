import { core as mx } from "@frost-beta/mlx";

/** Keys and values of one layer for a token range: each [1, kvHeads, tokens, headDim] float32. */
export interface LayerKV {
  keys: mx.array;
  values: mx.array;
}

/** Tokens added to a cache buffer at a time when it has to grow. */
export const CACHE_STEP_TOKENS = 256;

/**
 * One layer's keys and values, kept in a preallocated buffer [1, kvHeads, capacity, headDim]
 * that new tokens are written into with slice assignment.
 *
 * Keys are stored after rotary embedding, so a token's entries are only valid at the position
 * they were computed for: a restored range must go back to the same positions.
 *
 * Why `updateAndFetch` hands out the whole buffer instead of a view of its first `offset`
 * tokens: in these bindings an MLX array is freed only when its JS wrapper is garbage
 * collected. A view kept alive by an uncollected wrapper pins the buffer, so the next slice
 * assignment cannot write in place and copies the whole buffer instead (measured: every decode
 * step copied all layers' caches and memory grew until the process was killed). Handing out the
 * buffer itself and masking unused positions in attention keeps updates in place. Positions
 * at or beyond `offset` are zeros or stale entries; the causal mask over absolute positions hides
 * them (see `attentionMask` in models/base.ts).
 */
export class KVCache {
  /** Number of valid tokens; the next token is written at this position. */
  offset = 0;
  private keys: mx.array | null = null;
  private values: mx.array | null = null;

  constructor(
    readonly kvHeads: number,
    readonly headDim: number,
    readonly stepTokens: number = CACHE_STEP_TOKENS,
  ) {}

  /** Allocated positions; always a multiple of stepTokens. */
  get capacity(): number {
    return this.keys ? this.keys.shape[2] : 0;
  }

  /**
   * Makes room for `tokens` positions, rounded up to stepTokens. Growing copies the existing
   * entries, once per stepTokens tokens at most (like mlx-lm's KVCache); growing geometrically
   * instead would make every decode step scan a larger unused, masked tail. Callers that know the
   * final length (prompt + max_tokens) reserve it up front and never copy.
   */
  reserve(tokens: number): void {
    const capacity = this.capacity;
    if (tokens <= capacity) return;
    const newCapacity = Math.ceil(tokens / this.stepTokens) * this.stepTokens;
    const extraShape = [1, this.kvHeads, newCapacity - capacity, this.headDim];
    if (this.keys && this.values) {
      this.keys = mx.concatenate([this.keys, mx.zeros(extraShape, mx.float32)], 2);
      this.values = mx.concatenate([this.values, mx.zeros(extraShape, mx.float32)], 2);
    } else {
      this.keys = mx.zeros(extraShape, mx.float32);
      this.values = mx.zeros(extraShape, mx.float32);
    }
  }

  /**
   * Appends keys/values [1, kvHeads, T, headDim] at `offset` and returns the whole buffers
   * [1, kvHeads, capacity, headDim]. Entries at positions >= the new offset are not part of the
   * sequence and must be masked by the caller.
   */
  updateAndFetch(keys: mx.array, values: mx.array): [mx.array, mx.array] {
    const tokens = keys.shape[2];
    this.reserve(this.offset + tokens);
    const at = [mx.Slice(), mx.Slice(), mx.Slice(this.offset, this.offset + tokens), mx.Slice()];
    this.keys!.indexPut_(at, keys);
    this.values!.indexPut_(at, values);
    this.offset += tokens;
    return [this.keys!, this.values!];
  }

  /**
   * Copies positions [start, end) out as fresh arrays [1, kvHeads, end - start, headDim] float32,
   * evaluated. They share no memory with the cache, so holding them (e.g. in a block store)
   * neither pins the cache buffer nor sees later writes.
   */
  exportRange(start: number, end: number): LayerKV {
    if (
      !Number.isInteger(start) ||
      !Number.isInteger(end) ||
      start < 0 ||
      end > this.offset ||
      start >= end
    ) {
      throw new RangeError(`exportRange(${start}, ${end}) outside the cached range [0, ${this.offset})`);
    }
    // `take` gathers into a new buffer in one op; slicing would create a view that pins the cache.
    const positions = mx.arange(start, end, 1, mx.int32);
    const keys = mx.take(this.keys!, positions, 2);
    const values = mx.take(this.values!, positions, 2);
    mx.eval(keys, values);
    return { keys, values };
  }

  /**
   * Writes keys/values [1, kvHeads, n, headDim] at positions [at, at + n) and sets offset to
   * at + n: whatever was cached after `at` is dropped. `at` may not exceed offset, so the cached
   * sequence stays contiguous. The values are copied; the caller keeps ownership of its arrays.
   */
  importRange(at: number, keys: mx.array, values: mx.array): void {
    if (!Number.isInteger(at) || at < 0 || at > this.offset) {
      throw new RangeError(
        `importRange at ${at}: must be within [0, ${this.offset}] so the cache stays contiguous`,
      );
    }
    const expect = (name: string, a: mx.array): void => {
      const [b, h, n, d] = a.shape;
      if (a.ndim !== 4 || b !== 1 || h !== this.kvHeads || d !== this.headDim || n < 1) {
        throw new RangeError(
          `importRange ${name}: expected [1, ${this.kvHeads}, n, ${this.headDim}], got [${a.shape.join(", ")}]`,
        );
      }
    };
    expect("keys", keys);
    expect("values", values);
    if (keys.shape[2] !== values.shape[2]) {
      throw new RangeError(`importRange: keys hold ${keys.shape[2]} tokens but values ${values.shape[2]}`);
    }
    this.offset = at;
    this.updateAndFetch(keys.astype(mx.float32), values.astype(mx.float32));
  }

  /** Drops the last `n` tokens (fewer if the cache is shorter); returns how many were dropped. */
  trim(n: number): number {
    const dropped = Math.max(0, Math.min(n, this.offset));
    this.offset -= dropped;
    return dropped;
  }

  /** The buffers, for evaluating pending writes. */
  state(): mx.array[] {
    return this.keys && this.values ? [this.keys, this.values] : [];
  }
}

/**
 * What a recurrent layer (qwen3_5's Gated DeltaNet) carries from one token to the next, in place
 * of keys and values: the last kernel - 1 inputs of its causal convolution and the delta rule's
 * state. Both are replaced, not appended to, at every step, so unlike a KVCache this cannot be
 * exported by token range, trimmed, or rebuilt from a prefix cache's blocks. Null until the
 * layer first runs; the layer knows the shapes.
 */
export class RecurrentState {
  /** [1, kernel - 1, convChannels]: the convolution's input rows before the next token. */
  conv: mx.array | null = null;
  /** [1, valueHeads, valueHeadDim, keyHeadDim]: the delta rule's state S. */
  delta: mx.array | null = null;

  /** The arrays, for evaluating pending updates. */
  state(): mx.array[] {
    return [this.conv, this.delta].filter((a): a is mx.array => a !== null);
  }
}

/**
 * The caches of all layers of one sequence: a KVCache per layer, and for the layers listed as
 * recurrent a RecurrentState they use instead (their KVCache stays empty and unallocated).
 * Token positions (offset, capacity) are those of the attention layers.
 */
export class ModelCache {
  readonly layers: KVCache[];
  /** Per layer: its recurrent state, or null for an attention layer. */
  readonly recurrent: (RecurrentState | null)[];
  /** The layers that hold keys and values. */
  readonly #attention: KVCache[];

  constructor(
    numLayers: number,
    kvHeads: number,
    headDim: number,
    stepTokens = CACHE_STEP_TOKENS,
    recurrentLayers: readonly number[] = [],
  ) {
    this.layers = Array.from({ length: numLayers }, () => new KVCache(kvHeads, headDim, stepTokens));
    this.recurrent = this.layers.map((_, i) => (recurrentLayers.includes(i) ? new RecurrentState() : null));
    this.#attention = this.layers.filter((_, i) => this.recurrent[i] === null);
    if (this.#attention.length === 0) throw new RangeError("ModelCache: at least one layer must attend");
  }

  /** True when some layer carries recurrent state, which token ranges of KV cannot restore. */
  get hasRecurrentState(): boolean {
    return this.#attention.length < this.layers.length;
  }

  /** Number of cached tokens (the same in every layer). */
  get offset(): number {
    return this.#attention[0].offset;
  }

  /** Allocated positions per layer. */
  get capacity(): number {
    return this.#attention[0].capacity;
  }

  /** Preallocates room for `tokens` positions in every layer, e.g. prompt plus max_tokens. */
  reserve(tokens: number): void {
    for (const layer of this.#attention) layer.reserve(tokens);
    mx.eval(...this.state());
  }

  /** Copies positions [start, end) of every layer; see KVCache.exportRange. */
  export(start: number, end: number): LayerKV[] {
    this.refuseRecurrent("export");
    return this.layers.map((layer) => layer.exportRange(start, end));
  }

  /** Writes one LayerKV per layer at positions [at, at + n); see KVCache.importRange. */
  import(at: number, ranges: LayerKV[]): void {
    this.refuseRecurrent("import");
    if (ranges.length !== this.layers.length) {
      throw new RangeError(`import: got ${ranges.length} layers, the model has ${this.layers.length}`);
    }
    this.layers.forEach((layer, i) => layer.importRange(at, ranges[i].keys, ranges[i].values));
    mx.eval(...this.state());
  }

  /** Drops the last `n` tokens of every layer; returns how many were dropped. */
  trim(n: number): number {
    this.refuseRecurrent("trim");
    let dropped = 0;
    for (const layer of this.layers) dropped = layer.trim(n);
    return dropped;
  }

  /** Every layer's buffers and recurrent states. */
  state(): mx.array[] {
    return [
      ...this.#attention.flatMap((layer) => layer.state()),
      ...this.recurrent.flatMap((r) => r?.state() ?? []),
    ];
  }

  /** A recurrent state holds the whole past in one array: no token range of it exists to move. */
  private refuseRecurrent(op: string): void {
    if (this.hasRecurrentState) {
      throw new RangeError(`${op}: this cache holds recurrent layer state, which has no token ranges`);
    }
  }
}
