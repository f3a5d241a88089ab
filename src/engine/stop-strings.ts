/**
 * Holds back generated text that could still turn into a stop string, so that a stop string is never
 * streamed even when it arrives split across tokens.
 */
export class StopStringFilter {
  private pending = "";

  constructor(private readonly stops: string[]) {}

  /** Adds text; returns the text safe to emit and whether a stop string was completed. */
  push(text: string): { text: string; stopped: boolean } {
    this.pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const at = this.pending.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const out = this.pending.slice(0, cut);
      this.pending = "";
      return { text: out, stopped: true };
    }
    // Keep the longest tail that is a proper prefix of some stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.pending.length); n > hold; n--) {
        if (this.pending.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text: out, stopped: false };
  }

  /** Text still held back, released when generation ends for another reason. */
  flush(): string {
    const out = this.pending;
    this.pending = "";
    return out;
  }
}
