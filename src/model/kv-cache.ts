import { core as mx } from "@frost-beta/mlx";
import { RecurrentState, type RecurrentSnapshot } from "./recurrent-state";

export { RecurrentState, type RecurrentSnapshot };

/** Keys and values of one layer for a token range: each [1, kvHeads, tokens, headDim] float32. */
export interface LayerKV {
  keys: mx.array;
  values: mx.array;
}

/**
 * Rows to import into one attention layer: one array or consecutive pieces (a restore's blocks),
 * each [1, kvHeads, n, headDim], keys and values cut alike.
 */
export interface LayerRows {
  keys: mx.array | readonly mx.array[];
  values: mx.array | readonly mx.array[];
}

/** One array or consecutive pieces, as a list. */
export function pieces(a: mx.array | readonly mx.array[]): readonly mx.array[] {
  return Array.isArray(a) ? (a as readonly mx.array[]) : [a as mx.array];
}

/** Tokens added to a cache buffer at a time when it has to grow. */
export const CACHE_STEP_TOKENS = 256;

/** Pieces joined along the positions and converted to float32 once (a conversion per piece costs a native call each). */
function join(parts: readonly mx.array[], stream: mx.Stream | undefined): mx.array {
  return (parts.length === 1 ? parts[0] : mx.concatenate([...parts], 2, stream)).astype(mx.float32, stream);
}

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
 * them (see `attentionMask` in models/attention.ts).
 */
export class KVCache {
  /** Number of valid tokens; the next token is written at this position. */
  offset = 0;
  /**
   * Positions below this were skipped by a restore (skipTo) and hold no keys or values: a
   * sliding-window layer's rows older than its window. They cannot be exported.
   */
  skippedBelow = 0;
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
    if (this.fillEmpty(this.offset, [keys], [values], tokens, undefined)) return [this.keys!, this.values!];
    this.reserve(this.offset + tokens);
    const at = [mx.Slice(), mx.Slice(), mx.Slice(this.offset, this.offset + tokens), mx.Slice()];
    this.keys!.indexPut_(at, keys);
    this.values!.indexPut_(at, values);
    this.offset += tokens;
    return [this.keys!, this.values!];
  }

  /**
   * Into a layer that holds nothing yet (fresh, or only positions skipped by skipTo), writing at
   * its offset builds a new buffer instead of writing into the reserved one: zeros before `at`,
   * the pieces, zeros up to the capacity, each byte written once. The reserved buffer is a lazy
   * broadcast of zero, which a slice assignment first copies element by element, and so does a
   * concatenation of zeros; mx.pad fills them at memory speed. Measured on this CPU, 44 to 48
   * buffers of 8,448 positions: qwen2.5-0.5b's layers filled with 8,191 restored rows, 107 ms by
   * slice assignment, 37 by concatenation, 33 by pad; gemma3-1b's sliding layers holding their
   * last 513 rows, 97, 285 and 104 ms (so a small zero region is concatenated, a large one padded).
   * Returns false, doing nothing, when the layer holds tokens, or when the result would be a
   * single piece itself (a caller's array, which the cache must not adopt).
   */
  private fillEmpty(
    at: number,
    keys: readonly mx.array[],
    values: readonly mx.array[],
    rows: number,
    stream: mx.Stream | undefined,
  ): boolean {
    if (this.offset !== this.skippedBelow || at !== this.offset) return false;
    const capacity = Math.max(this.capacity, Math.ceil((at + rows) / this.stepTokens) * this.stepTokens);
    const back = capacity - at - rows;
    if (keys.length === 1 && at === 0 && back === 0) return false;
    const zeros = (n: number) => mx.zeros([1, this.kvHeads, n, this.headDim], mx.float32, stream);
    const build = (parts: readonly mx.array[]): mx.array => {
      if (at + back <= rows) {
        return join([...(at > 0 ? [zeros(at)] : []), ...parts, ...(back > 0 ? [zeros(back)] : [])], stream);
      }
      const joined = join(parts, stream);
      return mx.pad(
        joined,
        [
          [0, 0],
          [0, 0],
          [at, back],
          [0, 0],
        ],
        0,
        stream,
      );
    };
    this.keys = build(keys);
    this.values = build(values);
    this.offset = at + rows;
    return true;
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
    if (start < this.skippedBelow) {
      throw new RangeError(
        `exportRange(${start}, ${end}): positions below ${this.skippedBelow} were not restored`,
      );
    }
    // A slice alone would be a view that pins the cache's buffer; multiplying it by one copies it
    // into a buffer of its own, bit for bit (negative zeros and NaNs included). A copy made by
    // `take` (a gather) holds the same bytes, but concatenating such pieces back into a layer ran
    // 1.4x slower (50 against 36 ms for 8,192 positions of qwen2.5-0.5b).
    const rows = [mx.Slice(), mx.Slice(), mx.Slice(start, end), mx.Slice()];
    const keys = mx.multiply(this.keys!.index(...rows), 1);
    const values = mx.multiply(this.values!.index(...rows), 1);
    mx.eval(keys, values);
    return { keys, values };
  }

  /**
   * Writes keys/values [1, kvHeads, n, headDim] (or consecutive pieces of them) at positions
   * [at, at + n) and sets offset to at + n: whatever was cached after `at` is dropped. `at` may not
   * exceed offset, so the cached sequence stays contiguous. The values are copied; the caller keeps
   * ownership of its arrays.
   *
   * Into a layer that holds nothing yet (fresh, or only positions skipped by skipTo), the buffer
   * is built from the pieces in one pass (see fillEmpty). Otherwise the pieces are joined and
   * written into the buffer.
   */
  importRange(
    at: number,
    keys: mx.array | readonly mx.array[],
    values: mx.array | readonly mx.array[],
  ): void {
    const keyParts = pieces(keys);
    const valueParts = pieces(values);
    this.writeRows(at, keyParts, valueParts, this.rowsOf(keyParts, valueParts));
  }

  /**
   * Rows held by keys and values given as pieces [1, kvHeads, n, headDim], checked alike; throws
   * a RangeError naming what does not fit. Reads each piece's shape once: a restore hands over
   * thousands of pieces, and every property read crosses into native code.
   */
  rowsOf(keys: readonly mx.array[], values: readonly mx.array[]): number {
    const count = (name: string, parts: readonly mx.array[]): number => {
      if (parts.length === 0) throw new RangeError(`importRange ${name}: no rows`);
      let rows = 0;
      for (const a of parts) {
        const shape = a.shape;
        const [b, h, n, d] = shape;
        if (shape.length !== 4 || b !== 1 || h !== this.kvHeads || d !== this.headDim || n < 1) {
          throw new RangeError(
            `importRange ${name}: expected [1, ${this.kvHeads}, n, ${this.headDim}], got [${shape.join(", ")}]`,
          );
        }
        rows += n;
      }
      return rows;
    };
    const rows = count("keys", keys);
    const valueRows = count("values", values);
    if (valueRows !== rows) {
      throw new RangeError(`importRange: keys hold ${rows} tokens but values ${valueRows}`);
    }
    return rows;
  }

  /**
   * importRange for pieces whose rows `rowsOf` counted. With `stream`, the copies run there
   * (ModelCache.import spreads layers over cpuStreams()); the bytes are the same.
   */
  writeRows(
    at: number,
    keys: readonly mx.array[],
    values: readonly mx.array[],
    rows: number,
    stream?: mx.Stream,
  ): void {
    if (!Number.isInteger(at) || at < 0 || at > this.offset) {
      throw new RangeError(
        `importRange at ${at}: must be within [0, ${this.offset}] so the cache stays contiguous`,
      );
    }
    if (this.fillEmpty(at, keys, values, rows, stream)) return;
    this.offset = at;
    this.updateAndFetch(join(keys, stream), join(values, stream));
  }

  /**
   * Takes `keys` and `values` [1, kvHeads, C, headDim] as the layer's buffers, holding `rows`
   * tokens: a restore into an empty layer that loaded the layer whole. C must be a multiple of
   * stepTokens and at least `rows`; the positions from `rows` on must hold zeros, as a buffer this
   * cache builds would. With C at least the reserved capacity the arrays become the buffers as they
   * are, no copy; a shorter C is padded with zeros to the capacity (one copy). The cache owns the
   * arrays afterwards.
   */
  adopt(keys: mx.array, values: mx.array, rows: number): void {
    if (this.offset !== 0 || this.skippedBelow !== 0)
      throw new RangeError(`adopt: the layer already holds ${this.offset} tokens`);
    for (const a of [keys, values]) {
      const [b, h, n, d] = a.shape;
      if (a.ndim !== 4 || b !== 1 || h !== this.kvHeads || d !== this.headDim || a.dtype !== mx.float32)
        throw new RangeError(
          `adopt: expected float32 [1, ${this.kvHeads}, n, ${this.headDim}], got [${a.shape.join(", ")}]`,
        );
      if (n % this.stepTokens !== 0 || !Number.isInteger(rows) || rows < 0 || rows > n)
        throw new RangeError(`adopt: ${n} positions for ${rows} tokens (step ${this.stepTokens})`);
    }
    if (keys.shape[2] !== values.shape[2]) throw new RangeError("adopt: keys and values differ in length");
    const back = this.capacity - keys.shape[2];
    const fit = (a: mx.array) =>
      back > 0
        ? mx.pad(a, [
            [0, 0],
            [0, 0],
            [0, back],
            [0, 0],
          ])
        : a;
    this.keys = fit(keys);
    this.values = fit(values);
    this.offset = rows;
  }

  /**
   * Moves the offset forward to `position` without writing the positions in between: a restore
   * into a fresh cache leaves a sliding-window layer's rows that no later query can see (older than
   * its window) as the zeros they are. They are masked in attention and cannot be exported.
   */
  skipTo(position: number): void {
    if (!Number.isInteger(position) || position < this.offset) {
      throw new RangeError(`skipTo(${position}): the cache already holds ${this.offset} tokens`);
    }
    this.reserve(position);
    this.offset = position;
    this.skippedBelow = position;
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

/** What a block holds for one layer: keys and values of its tokens, or a recurrent snapshot. */
export type LayerBlock = LayerKV | RecurrentSnapshot;

/** True for a recurrent layer's part of a block. */
export function isSnapshot(layer: LayerBlock): layer is RecurrentSnapshot {
  return "delta" in layer;
}
