/**
 * Applies a grammar's token bitmask to a row of logits: disallowed tokens get -inf, so greedy and
 * seeded sampling alike can only pick allowed ones.
 *
 * Bytes cannot be handed to MLX directly: an array is built from JS numbers, about 140 ns each, and
 * through float32, so a 32-bit mask word would lose bits. The mask therefore travels in the cheapest
 * of three forms, each of which writes the masked logits once (one new array of the vocabulary's size):
 *
 * - few tokens allowed (a JSON structure character, a property name): their ids; the result is -inf
 *   everywhere but at those ids, where the logits are gathered back;
 * - few tokens refused (inside a string): their ids, set to -inf;
 * - otherwise the mask as 16-bit halves of its words (exact in float32), expanded to one bit per token
 *   in MLX and applied with a single `where`.
 *
 * An id list is used when it is no longer than the list of halves (vocabulary / 16).
 */
import { core as mx } from "@frost-beta/mlx";

/** Bits set in a 32-bit word. */
function popcount(w: number): number {
  w -= (w >>> 1) & 0x55555555;
  w = (w & 0x33333333) + ((w >>> 2) & 0x33333333);
  return (((w + (w >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Counts the tokens a bitmask allows among the first `vocab`. */
export function countAllowed(bitmask: Int32Array, vocab: number): number {
  let n = 0;
  const full = vocab >>> 5;
  for (let i = 0; i < full; i++) n += popcount(bitmask[i]);
  const rest = vocab & 31;
  if (rest) n += popcount(bitmask[full] & ((1 << rest) - 1));
  return n;
}

/** Ids below `vocab` whose bit is `bit` (1: allowed, 0: refused), at most `limit` of them (ascending). */
export function idsWithBit(bitmask: Int32Array, vocab: number, bit: 0 | 1, limit = Infinity): number[] {
  const ids: number[] = [];
  const words = Math.ceil(vocab / 32);
  for (let i = 0; i < words && ids.length < limit; i++) {
    let w = bit ? bitmask[i] : ~bitmask[i];
    while (w !== 0 && ids.length < limit) {
      const low = w & -w;
      const id = i * 32 + 31 - Math.clz32(low);
      if (id >= vocab) break;
      ids.push(id);
      w ^= low;
    }
  }
  return ids;
}

/** Masks logits of one vocabulary size; holds the constants of the dense path. */
export class TokenMasker {
  private readonly halves: number;
  private readonly shifts: mx.array;
  private readonly one: mx.array;

  constructor(readonly vocab: number) {
    this.halves = Math.ceil(vocab / 32) * 2;
    this.shifts = mx
      .array(
        Array.from({ length: 16 }, (_, i) => i),
        mx.int32,
      )
      .reshape([1, 16]);
    this.one = mx.array(1, mx.int32);
  }

  /**
   * The first `vocab` logits ([n] or [1, n], n >= vocab) with every token the bitmask refuses at -inf,
   * as [vocab]. Logits past the tokenizer's vocabulary (an embedding table padded as Qwen's is) are
   * never allowed and are left out, so that the work follows the tokens that exist.
   */
  apply(logits: mx.array, bitmask: Int32Array, allowed: number): mx.array {
    let flat = logits.reshape([-1]);
    if (flat.shape[0] < this.vocab) {
      throw new RangeError(
        `logits have ${flat.shape[0]} entries, fewer than the grammar's ${this.vocab} tokens`,
      );
    }
    if (flat.shape[0] > this.vocab) flat = flat.index(mx.Slice(0, this.vocab));
    const refused = this.vocab - allowed;
    if (allowed <= refused && allowed <= this.halves) {
      const idx = mx.array(idsWithBit(bitmask, this.vocab, 1), mx.int32);
      const out = mx.full([this.vocab], -Infinity, mx.float32);
      out.indexPut_(idx, mx.take(flat, idx));
      return out;
    }
    if (refused <= this.halves) {
      if (refused === 0) return flat;
      flat.indexPut_(mx.array(idsWithBit(bitmask, this.vocab, 0), mx.int32), -Infinity);
      return flat;
    }
    const halves: number[] = new Array(this.halves);
    for (let i = 0; i < this.halves / 2; i++) {
      const w = bitmask[i];
      halves[2 * i] = w & 0xffff;
      halves[2 * i + 1] = w >>> 16;
    }
    const shape = [this.halves, 16];
    const words = mx.broadcastTo(mx.array(halves, mx.int32).reshape([-1, 1]), shape);
    // rightShift does not broadcast in this binding: both sides are broadcast explicitly.
    const bits = mx.bitwiseAnd(mx.rightShift(words, mx.broadcastTo(this.shifts, shape)), this.one);
    const allowedBits = bits.reshape([-1]).index(mx.Slice(0, this.vocab)).astype(mx.bool);
    return mx.where(allowedBits, flat, -Infinity);
  }
}
