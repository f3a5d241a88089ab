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
    if (this.fillEmpty(this.offset, [keys], [values], tokens)) return [this.keys!, this.values!];
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
  ): boolean {
    if (this.offset !== this.skippedBelow || at !== this.offset) return false;
    const capacity = Math.max(this.capacity, Math.ceil((at + rows) / this.stepTokens) * this.stepTokens);
    const back = capacity - at - rows;
    if (keys.length === 1 && at === 0 && back === 0) return false;
    const zeros = (n: number) => mx.zeros([1, this.kvHeads, n, this.headDim], mx.float32);
    const build = (parts: readonly mx.array[]): mx.array => {
      if (at + back <= rows) {
        return mx.concatenate(
          [...(at > 0 ? [zeros(at)] : []), ...parts, ...(back > 0 ? [zeros(back)] : [])],
          2,
        );
      }
      const joined = parts.length === 1 ? parts[0] : mx.concatenate([...parts], 2);
      return mx.pad(joined, [
        [0, 0],
        [0, 0],
        [at, back],
        [0, 0],
      ]);
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
    if (!Number.isInteger(at) || at < 0 || at > this.offset) {
      throw new RangeError(
        `importRange at ${at}: must be within [0, ${this.offset}] so the cache stays contiguous`,
      );
    }
    const keyParts = Array.isArray(keys) ? (keys as readonly mx.array[]) : [keys as mx.array];
    const valueParts = Array.isArray(values) ? (values as readonly mx.array[]) : [values as mx.array];
    const rowsOf = (name: string, parts: readonly mx.array[]): number => {
      if (parts.length === 0) throw new RangeError(`importRange ${name}: no rows`);
      let rows = 0;
      for (const a of parts) {
        const [b, h, n, d] = a.shape;
        if (a.ndim !== 4 || b !== 1 || h !== this.kvHeads || d !== this.headDim || n < 1) {
          throw new RangeError(
            `importRange ${name}: expected [1, ${this.kvHeads}, n, ${this.headDim}], got [${a.shape.join(", ")}]`,
          );
        }
        rows += n;
      }
      return rows;
    };
    const rows = rowsOf("keys", keyParts);
    if (rowsOf("values", valueParts) !== rows) {
      throw new RangeError(
        `importRange: keys hold ${rows} tokens but values ${rowsOf("values", valueParts)}`,
      );
    }
    const f32 = (parts: readonly mx.array[]) => parts.map((a) => a.astype(mx.float32));
    if (this.fillEmpty(at, f32(keyParts), f32(valueParts), rows)) return;
    const join = (parts: mx.array[]) => (parts.length === 1 ? parts[0] : mx.concatenate(parts, 2));
    this.offset = at;
    this.updateAndFetch(join(f32(keyParts)), join(f32(valueParts)));
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

  /** True when some layer carries recurrent state, which a restore takes from a snapshot. */
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

  /** Positions a layer's buffer grows by; its capacity is a multiple of it. */
  get stepTokens(): number {
    return this.#attention[0].stepTokens;
  }

  /**
   * Reserves room for `tokens` positions in every layer, e.g. prompt plus max_tokens. The buffers stay
   * lazy zeros: the first write into an empty layer builds its buffer in one pass (KVCache.fillEmpty),
   * and evaluating them here would write every byte first (at 8k positions of qwen2.5-0.5b, 216 MB:
   * 30 to 80 ms before a request's lookup).
   */
  reserve(tokens: number): void {
    for (const layer of this.#attention) layer.reserve(tokens);
  }

  /**
   * Makes the recurrent layers keep their state at every multiple of `blockTokens` (0: stop), so
   * that blocks ending there can be exported. No effect without recurrent layers.
   */
  captureSnapshots(blockTokens: number): void {
    for (const r of this.recurrent) if (r) r.snapshotTokens = blockTokens;
  }

  /** Snapshots held per recurrent layer (the same count in each). */
  get snapshotCount(): number {
    return this.recurrent.find((r) => r !== null)?.snapshots.size ?? 0;
  }

  /** Drops the snapshots taken at or before `position` (they are persisted, or never will be). */
  dropSnapshots(position: number): void {
    for (const r of this.recurrent) {
      if (!r) continue;
      for (const at of [...r.snapshots.keys()]) if (at <= position) r.snapshots.delete(at);
    }
  }

  /**
   * Whether positions [start, end) can be exported: for attention layers when a restore skipped
   * none of them (KVCache.skipTo), for recurrent ones when their state after `end` is the current
   * one or was captured.
   */
  canExport(start: number, end: number): boolean {
    return this.layers.every((layer, i) => {
      const r = this.recurrent[i];
      return r ? r.at(end) !== undefined : layer.skippedBelow <= start;
    });
  }

  /**
   * Copies positions [start, end) of every attention layer (see KVCache.exportRange) and, for a
   * recurrent layer, its state after `end` (shared, not copied: states are never written in place).
   */
  export(start: number, end: number): LayerBlock[] {
    return this.layers.map((layer, i) => {
      const r = this.recurrent[i];
      if (!r) return layer.exportRange(start, end);
      const snapshot = r.at(end);
      if (!snapshot)
        throw new RangeError(`export: layer ${i} holds no recurrent state after position ${end}`);
      return snapshot;
    });
  }

  /**
   * Writes the tokens at positions [at, end) of every attention layer (see KVCache.importRange).
   * A layer's range may hold only the last m of them, [end - m, end), or be null for none: a
   * sliding-window layer's rows older than its window are skipped (KVCache.skipTo). `end`
   * defaults to at plus the first attention layer's row count. Entries of recurrent layers are
   * ignored (null or a snapshot): a restore sets their state once, where it ends, with
   * importRecurrent.
   */
  import(at: number, ranges: readonly (LayerBlock | LayerRows | null)[], end?: number): void {
    if (ranges.length !== this.layers.length) {
      throw new RangeError(`import: got ${ranges.length} layers, the model has ${this.layers.length}`);
    }
    const rowsOf = (r: LayerBlock | LayerRows | null): number => {
      if (!r || "delta" in r) return 0;
      const keys = r.keys as mx.array | readonly mx.array[];
      return Array.isArray(keys)
        ? (keys as readonly mx.array[]).reduce((n, a) => n + a.shape[2], 0)
        : (keys as mx.array).shape[2];
    };
    const stop = end ?? at + rowsOf(ranges[this.recurrent.indexOf(null)]);
    this.layers.forEach((layer, i) => {
      if (this.recurrent[i]) return;
      const range = ranges[i];
      if (range && "delta" in range) throw new RangeError(`import: layer ${i} needs keys and values`);
      const rows = rowsOf(range);
      if (rows > stop - at) throw new RangeError(`import: layer ${i} has ${rows} rows for [${at}, ${stop})`);
      if (stop - rows > at) layer.skipTo(stop - rows);
      else if (layer.offset < at)
        throw new RangeError(`import at ${at}: layer ${i} holds ${layer.offset} tokens`);
      if (range && rows > 0) layer.importRange(stop - rows, range.keys, range.values);
    });
    // A layer that only skipped positions keeps its reserved zeros unevaluated: a later import
    // builds its buffer anew (KVCache.fillEmpty), and evaluating them would write every byte.
    mx.eval(...this.layers.filter((l) => l.offset > l.skippedBelow).flatMap((l) => l.state()));
  }

  /**
   * Takes whole buffers for every attention layer of an empty cache, holding `rows` tokens
   * (KVCache.adopt), and evaluates them. Entries of recurrent layers are ignored.
   */
  adopt(buffers: readonly (LayerKV | null)[], rows: number): void {
    if (buffers.length !== this.layers.length) {
      throw new RangeError(`adopt: got ${buffers.length} layers, the model has ${this.layers.length}`);
    }
    if (this.offset !== 0) throw new RangeError(`adopt: the cache already holds ${this.offset} tokens`);
    this.layers.forEach((layer, i) => {
      if (this.recurrent[i]) return;
      const b = buffers[i];
      if (!b) throw new RangeError(`adopt: layer ${i} needs keys and values`);
      layer.adopt(b.keys, b.values, rows);
    });
    // Padded buffers are lazy; arrays taken as they are were evaluated already (a no-op).
    mx.eval(...this.state());
  }

  /**
   * Sets every recurrent layer's state to the snapshot taken after the cache's last token (offset),
   * as restored from the block ending there. Entries of attention layers are ignored.
   */
  importRecurrent(snapshots: readonly (LayerBlock | null)[]): void {
    if (snapshots.length !== this.layers.length) {
      throw new RangeError(
        `importRecurrent: got ${snapshots.length} layers, the model has ${this.layers.length}`,
      );
    }
    const position = this.offset;
    this.recurrent.forEach((r, i) => {
      if (!r) return;
      const s = snapshots[i];
      if (!s || !isSnapshot(s))
        throw new RangeError(`importRecurrent: layer ${i} needs a recurrent snapshot`);
      r.conv = s.conv.astype(mx.float32);
      r.delta = s.delta.astype(mx.float32);
      r.position = position;
      r.snapshots.clear();
    });
    mx.eval(...this.state());
  }

  /**
   * Drops the last `n` tokens of every layer; returns how many were dropped. A recurrent state
   * cannot go back, so a cache holding one refuses any n > 0.
   */
  trim(n: number): number {
    if (this.hasRecurrentState && n > 0) {
      throw new RangeError("trim: this cache holds recurrent layer state, which cannot go back");
    }
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
}
