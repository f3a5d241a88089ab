/** Why an SSD write failed: the disk was full, the device failed, or anything else. */
export type WriteErrorCause = "ENOSPC" | "EIO" | "other";

/** The cause of a thrown error, by its errno code. */
export function causeOf(err: unknown): WriteErrorCause {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "ENOSPC" || code === "EIO" ? code : "other";
}

/** Failed writes by cause. */
export type WriteErrorCounts = Record<WriteErrorCause, number>;

// At most one log line per cause in this time; the next line says how many were not logged.
const LOG_INTERVAL_MS = 60_000;

/**
 * Counts the SSD tier's failed writes by cause and says so in the log, at most one line per cause
 * per minute (a full disk fails every write until space comes back; one line says it, the counters
 * say how often).
 */
export class WriteErrors {
  readonly counts: WriteErrorCounts = { ENOSPC: 0, EIO: 0, other: 0 };
  private readonly lastLogMs: Record<WriteErrorCause, number> = {
    ENOSPC: -Infinity,
    EIO: -Infinity,
    other: -Infinity,
  };
  private readonly unlogged: WriteErrorCounts = { ENOSPC: 0, EIO: 0, other: 0 };

  constructor(
    private readonly log: (line: string) => void,
    private readonly nowMs: () => number,
  ) {}

  get total(): number {
    return this.counts.ENOSPC + this.counts.EIO + this.counts.other;
  }

  /** Counts `n` failed writes of `what` (e.g. "chain.log append"), and logs unless one was logged lately. */
  add(cause: WriteErrorCause, n: number, what: string, detail: string): void {
    if (n <= 0) return;
    this.counts[cause] += n;
    const now = this.nowMs();
    if (now - this.lastLogMs[cause] < LOG_INTERVAL_MS) {
      this.unlogged[cause] += n;
      return;
    }
    const more = this.unlogged[cause];
    this.lastLogMs[cause] = now;
    this.unlogged[cause] = 0;
    this.log(
      `kvpark: cache: SSD write failed (${cause}): ${what}: ${detail}` +
        (more > 0 ? ` (${more} more ${cause} failures since the last line)` : ""),
    );
  }

  /** A line for the log that is not a counted failure (what an open found and did). */
  report(line: string): void {
    this.log(`kvpark: cache: ${line}`);
  }

  /** Counts a thrown error by its cause. */
  addError(err: unknown, n: number, what: string): void {
    this.add(causeOf(err), n, what, (err as Error)?.message ?? String(err));
  }
}
