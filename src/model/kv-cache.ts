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

/** The KV caches of all layers of one sequence. */
export class ModelCache {
  readonly layers: KVCache[];

  constructor(numLayers: number, kvHeads: number, headDim: number, stepTokens = CACHE_STEP_TOKENS) {
    this.layers = Array.from({ length: numLayers }, () => new KVCache(kvHeads, headDim, stepTokens));
  }

  /** Number of cached tokens (the same in every layer). */
  get offset(): number {
    return this.layers[0].offset;
  }

  /** Allocated positions per layer. */
  get capacity(): number {
    return this.layers[0].capacity;
  }

  /** Preallocates room for `tokens` positions in every layer, e.g. prompt plus max_tokens. */
  reserve(tokens: number): void {
    for (const layer of this.layers) layer.reserve(tokens);
    mx.eval(...this.state());
  }

  /** Copies positions [start, end) of every layer; see KVCache.exportRange. */
  export(start: number, end: number): LayerKV[] {
    return this.layers.map((layer) => layer.exportRange(start, end));
  }

  /** Writes one LayerKV per layer at positions [at, at + n); see KVCache.importRange. */
  import(at: number, ranges: LayerKV[]): void {
    if (ranges.length !== this.layers.length) {
      throw new RangeError(`import: got ${ranges.length} layers, the model has ${this.layers.length}`);
    }
    this.layers.forEach((layer, i) => layer.importRange(at, ranges[i].keys, ranges[i].values));
    mx.eval(...this.state());
  }

  /** Drops the last `n` tokens of every layer; returns how many were dropped. */
  trim(n: number): number {
    let dropped = 0;
    for (const layer of this.layers) dropped = layer.trim(n);
    return dropped;
  }

  /** Every layer's buffers. */
  state(): mx.array[] {
    return this.layers.flatMap((layer) => layer.state());
  }
}
