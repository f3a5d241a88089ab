import { core as mx } from "@frost-beta/mlx";
import {
  CACHE_STEP_TOKENS,
  isSnapshot,
  KVCache,
  pieces,
  type LayerBlock,
  type LayerKV,
  type LayerRows,
} from "./kv-cache";
import { RecurrentState } from "./recurrent-state";
import { cpuStreams } from "./cpu-streams";

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
    const counted = this.layers.map((layer, i) => {
      const range = ranges[i];
      if (this.recurrent[i] || !range) return null;
      if ("delta" in range) throw new RangeError(`import: layer ${i} needs keys and values`);
      const keys = pieces(range.keys);
      const values = pieces(range.values);
      if (keys.length === 0 && values.length === 0) return null;
      return { keys, values, rows: layer.rowsOf(keys, values) };
    });
    const stop = end ?? at + (counted[this.recurrent.indexOf(null)]?.rows ?? 0);
    // The layers' copies alternate between the CPU streams, so they use every core: 8,192 tokens
    // of the qwen2.5-0.5b shape (48 buffers of 129 blocks) joined in 129 ms on one stream, 77 on two.
    const streams = cpuStreams();
    let copies = 0;
    this.layers.forEach((layer, i) => {
      if (this.recurrent[i]) return;
      const range = counted[i];
      const rows = range?.rows ?? 0;
      if (rows > stop - at) throw new RangeError(`import: layer ${i} has ${rows} rows for [${at}, ${stop})`);
      if (stop - rows > at) layer.skipTo(stop - rows);
      else if (layer.offset < at)
        throw new RangeError(`import at ${at}: layer ${i} holds ${layer.offset} tokens`);
      if (range)
        layer.writeRows(
          stop - rows,
          range.keys,
          range.values,
          rows,
          streams.length > 0 ? streams[copies++ % streams.length] : undefined,
        );
    });
    // A layer that only skipped positions keeps its reserved zeros unevaluated: a later import
    // builds its buffer anew (KVCache.fillEmpty), and evaluating them would write every byte.
    mx.eval(...this.layers.filter((l) => l.offset > l.skippedBelow).flatMap((l) => l.state()));
  }

  /**
   * Takes whole buffers for every attention layer of an empty cache, holding `rows` tokens
   * (KVCache.adopt), and starts evaluating them (a forward over them waits for what it reads).
   * Entries of recurrent layers are ignored.
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
    // Padded buffers are lazy, and so may be the arrays taken (a file still loading).
    mx.asyncEval(...this.state());
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
