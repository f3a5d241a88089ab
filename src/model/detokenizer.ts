/**
 * Streaming detokenization: generated token ids to text deltas that never end in a partial character.
 */
import type { DecodeOptions, ModelTokenizer } from "./tokenizer";

// An incomplete UTF-8 sequence has at most 3 bytes; decoders render it as at most 3 U+FFFD (one per
// byte for SentencePiece byte fallback, one in all for byte-level BPE). Only that many can still change.
const PROVISIONAL_REPLACEMENTS_MAX = 3;
// Tokens kept when a window that keeps ending in U+FFFD is cut: enough to hold an incomplete sequence.
const CUT_TAIL_TOKENS = 4;
// A window holding more unsettled tokens than this is cut, so decoding stays O(1) per token even when a
// model emits stray bytes for a long time.
const PENDING_TOKENS_MAX = 8;

function trailingReplacements(text: string): number {
  let n = 0;
  while (n < text.length && text.charCodeAt(text.length - 1 - n) === 0xfffd) n++;
  return Math.min(n, PROVISIONAL_REPLACEMENTS_MAX);
}

/**
 * Turns generated token ids into text deltas for streaming. The concatenated deltas equal
 * `decode(allIds)`, and a delta never ends in a partial UTF-8 character.
 *
 * Like text-generation-inference's decoder, each step decodes a short window: the tokens emitted by the
 * previous step (context, so SentencePiece-style leading spaces survive) plus the new ones, and emits what
 * the window's text gained. Text ending in U+FFFD may be a character whose bytes are still arriving, so
 * those last replacement characters are held back until the next token settles them.
 */
export class IncrementalDetokenizer {
  private window: number[] = [];
  /** window[0, contextTokens) was fully emitted by an earlier step and is only there as context. */
  private contextTokens = 0;
  /** Characters of decode(window) already emitted. */
  private emitted = 0;

  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly options: DecodeOptions = {},
  ) {}

  /** Adds one generated id and returns the text it completes (possibly empty). */
  push(id: number): string {
    this.window.push(id);
    const text = this.decode(this.window);
    const settled = text.length - trailingReplacements(text);
    let delta = "";
    if (settled > this.emitted) {
      delta = text.slice(this.emitted, settled);
      this.emitted = settled;
    }
    if (settled === text.length) {
      // Everything is out: the tokens of this step become the context of the next one.
      this.window = this.window.slice(this.contextTokens);
      this.contextTokens = this.window.length;
      this.emitted = this.decode(this.window).length;
    } else if (this.window.length - this.contextTokens > PENDING_TOKENS_MAX) {
      this.cut(text);
    }
    return delta;
  }

  /** Emits whatever is held back (a truly broken sequence stays U+FFFD); call once at the end. */
  flush(): string {
    const text = this.decode(this.window);
    const delta = text.length > this.emitted ? text.slice(this.emitted) : "";
    this.window = [];
    this.contextTokens = 0;
    this.emitted = 0;
    return delta;
  }

  /**
   * Drops the head of a window that keeps ending in U+FFFD, keeping the last few tokens. The cut is taken
   * only where decoding the two halves separately gives the same text, i.e. where no character and no
   * decoder context straddles it, and where the head's text is already emitted.
   */
  private cut(text: string): void {
    const at = this.window.length - CUT_TAIL_TOKENS;
    const head = this.decode(this.window.slice(0, at));
    if (head.length > this.emitted) return;
    const tail = this.window.slice(at);
    if (head + this.decode(tail) !== text) return;
    this.window = tail;
    this.contextTokens = 0;
    this.emitted -= head.length;
  }

  private decode(ids: readonly number[]): string {
    return this.tokenizer.decode(ids, this.options);
  }
}
