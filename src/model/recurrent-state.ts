import { core as mx } from "@frost-beta/mlx";

/** A recurrent layer's state at one position: what a restore to that position needs. */
export interface RecurrentSnapshot {
  /** [1, kernel - 1, convChannels]: the convolution's input rows before the next token. */
  conv: mx.array;
  /** [1, valueHeads, valueHeadDim, keyHeadDim]: the delta rule's state S. */
  delta: mx.array;
}

/**
 * What a recurrent layer (qwen3_5's Gated DeltaNet) carries from one token to the next, in place
 * of keys and values: the last kernel - 1 inputs of its causal convolution and the delta rule's
 * state. Both are replaced, not appended to, at every step, so unlike a KVCache no token range of
 * it exists: a prefix cache restores it from a snapshot taken after a block's last token. With
 * `snapshotTokens` set, the layer keeps the state it had after every position that is a multiple
 * of it (a block boundary), until the owner drops them (once persisted). Null until the layer
 * first runs; the layer knows the shapes.
 */
export class RecurrentState {
  /** [1, kernel - 1, convChannels]: the convolution's input rows before the next token. */
  conv: mx.array | null = null;
  /** [1, valueHeads, valueHeadDim, keyHeadDim]: the delta rule's state S. */
  delta: mx.array | null = null;
  /** Tokens the state has seen: the position of the next token. */
  position = 0;
  /** Capture a snapshot after every position that is a multiple of this; 0: none. */
  snapshotTokens = 0;
  /** Snapshots by the position they were taken after. */
  readonly snapshots = new Map<number, RecurrentSnapshot>();

  /** Whether the layer should keep its state after `position` tokens. */
  capturesAt(position: number): boolean {
    return this.snapshotTokens > 0 && position % this.snapshotTokens === 0;
  }

  /** The state after `position` tokens, if it is the current one or was captured. */
  at(position: number): RecurrentSnapshot | undefined {
    if (position === this.position && this.conv && this.delta) return { conv: this.conv, delta: this.delta };
    return this.snapshots.get(position);
  }

  /** The arrays, for evaluating pending updates (snapshots included). */
  state(): mx.array[] {
    const out = [this.conv, this.delta].filter((a): a is mx.array => a !== null);
    for (const s of this.snapshots.values()) out.push(s.conv, s.delta);
    return out;
  }
}
