/**
 * Keeps constrained output valid UTF-8. xgrammar follows UTF-8 through byte-level tokens but takes
 * every byte from C0 to F7 as a lead byte and checks no continuation's range, so a token holding
 * C0, C1 or F5-FF, or a sequence that is overlong, a surrogate or past U+10FFFF, could be generated;
 * a model with any probability on such tokens (a random one always) then writes U+FFFD into the
 * JSON. The guard tracks where the output stands inside a character and masks, before every token,
 * the tokens whose bytes would break UTF-8 from there.
 *
 * A decoder between tokens is in one of 8 states: at a character boundary, or expecting 1 to 3
 * continuation bytes with the range the next one must fall in (RFC 3629's table). Each token's
 * transition from every state is computed once per model, and so is, for every state, the bitmask of
 * the tokens allowed in it; a step then costs one AND over the mask's words.
 */

/** Continuation bytes still expected, and the range of the next one. State 0: at a boundary. */
const STATES: readonly { need: number; lo: number; hi: number }[] = [
  { need: 0, lo: 0, hi: 0 },
  { need: 1, lo: 0x80, hi: 0xbf },
  { need: 2, lo: 0x80, hi: 0xbf },
  { need: 2, lo: 0xa0, hi: 0xbf }, // after E0: no overlong form
  { need: 2, lo: 0x80, hi: 0x9f }, // after ED: no surrogate
  { need: 3, lo: 0x80, hi: 0xbf },
  { need: 3, lo: 0x90, hi: 0xbf }, // after F0: no overlong form
  { need: 3, lo: 0x80, hi: 0x8f }, // after F4: nothing past U+10FFFF
];
const STATE_COUNT = STATES.length;
const INVALID = -1;

/** The state after `byte`, or INVALID. */
function stepByte(state: number, byte: number): number {
  const s = STATES[state];
  if (s.need === 0) {
    if (byte < 0x80) return 0;
    if (byte >= 0xc2 && byte <= 0xdf) return 1;
    if (byte === 0xe0) return 3;
    if (byte === 0xed) return 4;
    if (byte >= 0xe1 && byte <= 0xef) return 2;
    if (byte === 0xf0) return 6;
    if (byte >= 0xf1 && byte <= 0xf3) return 5;
    if (byte === 0xf4) return 7;
    return INVALID;
  }
  if (byte < s.lo || byte > s.hi) return INVALID;
  return s.need === 1 ? 0 : s.need === 2 ? 1 : 2;
}

/** UTF-8 validity of token sequences over one vocabulary. */
export class Utf8Guard {
  /** next[id * STATE_COUNT + state]: the state after token `id`, or INVALID. */
  private readonly next: Int8Array;
  /** allowed[state]: bitmask of the tokens that may follow in that state. */
  private readonly allowed: Int32Array[];

  /**
   * `tokenBytes[id]` are the bytes token `id` stands for; an empty list is a token with no text
   * (a special or stop token), allowed at a character boundary only. Ids from tokenBytes.length to
   * `vocabSize` are never allowed.
   */
  constructor(tokenBytes: readonly Uint8Array[], vocabSize: number) {
    this.next = new Int8Array(vocabSize * STATE_COUNT).fill(INVALID);
    const words = Math.ceil(vocabSize / 32);
    this.allowed = STATES.map(() => new Int32Array(words));
    tokenBytes.forEach((bytes, id) => {
      for (let start = 0; start < STATE_COUNT; start++) {
        let state = start;
        if (bytes.length === 0 && start !== 0) continue;
        for (let i = 0; i < bytes.length && state !== INVALID; i++) state = stepByte(state, bytes[i]);
        if (state === INVALID) continue;
        this.next[id * STATE_COUNT + start] = state;
        this.allowed[start][id >> 5] |= 1 << (id & 31);
      }
    });
  }

  /** Clears, in `bitmask`, every token that would break UTF-8 in `state`. */
  restrict(bitmask: Int32Array, state: number): void {
    const allowed = this.allowed[state];
    for (let i = 0; i < allowed.length; i++) bitmask[i] &= allowed[i];
  }

  /** The state after token `id` (which restrict() allowed in `state`). */
  after(state: number, id: number): number {
    const next = this.next[id * STATE_COUNT + state];
    if (next === INVALID) throw new RangeError(`token ${id} breaks UTF-8 in state ${state}`);
    return next;
  }
}

/** GPT-2's byte-level alphabet, character to byte. */
function byteLevelBytes(): Map<string, number> {
  const map = new Map<string, number>();
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map.set(String.fromCharCode(printable ? b : 256 + next++), b);
  }
  return map;
}

/** The bytes each token stands for, from tokenizer.json's strings (as xgrammar decodes them). */
export function tokenBytes(
  encoded: readonly string[],
  type: "raw" | "byte_level" | "byte_fallback",
): Uint8Array[] {
  const utf8 = (s: string) => new Uint8Array(Buffer.from(s, "utf8"));
  if (type === "byte_level") {
    const alphabet = byteLevelBytes();
    return encoded.map((token) => {
      const bytes = Array.from(token, (c) => alphabet.get(c));
      return bytes.every((b) => b !== undefined) ? Uint8Array.from(bytes as number[]) : utf8(token);
    });
  }
  if (type === "byte_fallback") {
    return encoded.map((token) => {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
      return m ? Uint8Array.of(parseInt(m[1], 16)) : utf8(token.replace(/\u2581/g, " "));
    });
  }
  return encoded.map(utf8);
}
