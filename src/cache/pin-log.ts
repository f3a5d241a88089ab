import { BLOCK_KEY_BYTES } from "./block-key";
import type { FileIo } from "./file-io";
import { FramedFile, readFramed, type FrameFormat } from "./framed-log";
import type { WriteErrors } from "./write-errors";

/** A block's pins as the journal records them: hard, and a soft pin's absolute expiry (0 = none). */
export interface PinRecord {
  key: Buffer;
  hard: boolean;
  /** Unix milliseconds. */
  softUntilMs: number;
}

/** Version of the pin journal format. */
export const PIN_LOG_VERSION = 1;
const BODY_BYTES = BLOCK_KEY_BYTES + 16;

const FORMAT: FrameFormat<PinRecord> = {
  magic: Buffer.from("KVPKPIN\0", "latin1"),
  version: PIN_LOG_VERSION,
  bodyBytesMin: BODY_BYTES,
  bodyBytesMax: BODY_BYTES,
  plausible: () => true,
  decode: (body) => {
    const flags = body.readUInt32LE(32);
    const until = body.readBigUInt64LE(40);
    if ((flags & ~1) !== 0 || body.readUInt32LE(36) !== 0 || until > BigInt(Number.MAX_SAFE_INTEGER))
      return null;
    return { key: Buffer.from(body.subarray(0, 32)), hard: (flags & 1) === 1, softUntilMs: Number(until) };
  },
  encode: (r) => {
    const body = Buffer.alloc(BODY_BYTES);
    r.key.copy(body, 0);
    body.writeUInt32LE(r.hard ? 1 : 0, 32);
    body.writeBigUInt64LE(BigInt(Math.max(0, Math.ceil(r.softUntilMs))), 40);
    return body;
  },
};

/** Whether a record pins its block at `nowMs`. */
export function pinsAt(r: PinRecord, nowMs: number): boolean {
  return r.hard || r.softUntilMs > nowMs;
}

/** What the SSD tier's pin journal needs around it. */
export interface PinJournalDeps {
  io: FileIo;
  errors: WriteErrors;
  nowMs: () => number;
  /** fdatasync each change before the pin call returns. */
  durable: boolean;
}

/**
 * The pin journal (`pins.log`): every change of a block's pins, so that pins survive a restart,
 * kill -9 included (the store keeps pins only in its index checkpoint, so a pin made since the
 * last checkpoint is lost when the store is killed; it cannot be asked for a block's pin either).
 * Each record is a block's whole pin state after a change; an unpin is a record with no pin (a
 * tombstone), kept until the store has checkpointed (close), so that a pin the store reverted to
 * after a crash is taken back at the next open. Same framing as the chain log (framed-log.ts).
 *
 * A failed write (a full disk) is counted and logged, never thrown: the pin holds in memory and
 * in the store, and the journal is rewritten whole from memory at the next change or at close.
 */
export class PinJournal {
  /** The latest record of every key the journal names, tombstones included. */
  private readonly latest = new Map<string, PinRecord>();
  private log: FramedFile<PinRecord> | null = null;
  /** The file lacks a change `latest` holds: rewrite it instead of appending. */
  private stale = true;

  private constructor(
    private readonly file: string,
    private readonly deps: PinJournalDeps,
  ) {}

  /**
   * Reads the journal; records of blocks the store does not hold (`stored`) and soft pins that
   * have expired are dropped, and the journal is rewritten. Returns it and the records read, live
   * pins and tombstones, one per key.
   */
  static open(
    file: string,
    stored: (key: Buffer) => boolean,
    deps: PinJournalDeps,
  ): { journal: PinJournal; records: PinRecord[] } {
    const journal = new PinJournal(file, deps);
    let bytes: Buffer | null = null;
    try {
      bytes = deps.io.read(file);
    } catch (err) {
      deps.errors.report(`pins.log could not be read, pins are lost: ${(err as Error).message}`);
    }
    const read = bytes && readFramed(bytes, FORMAT);
    if (bytes && !read) deps.errors.report("pins.log has no pin journal header, pins are lost");
    if (read && read.damagedRanges + read.tornBytes > 0) {
      deps.errors.report(
        `pins.log: ${read.skippedBytes + read.tornBytes} damaged bytes skipped; pin changes recorded there are lost`,
      );
    }
    const now = deps.nowMs();
    for (const r of read?.records ?? []) {
      const keyHex = r.key.toString("hex");
      if (!stored(r.key)) journal.latest.delete(keyHex);
      else journal.latest.set(keyHex, r.hard || r.softUntilMs > now ? r : { ...r, softUntilMs: 0 });
    }
    journal.rewrite();
    return { journal, records: [...journal.latest.values()] };
  }

  /** Records changes of blocks' pins; an unpin of a block the journal never named is left out. */
  record(changes: readonly PinRecord[]): void {
    const fresh = changes.filter((c) => pinsAt(c, 0) || this.latest.has(c.key.toString("hex")));
    if (fresh.length === 0) return;
    for (const c of fresh) this.latest.set(c.key.toString("hex"), c);
    if (this.stale || !this.log || this.log.recordCount > 2 * this.latest.size + 1024) {
      this.rewrite();
      return;
    }
    try {
      this.log.append(fresh);
      if (this.deps.durable) this.log.syncNow();
    } catch (err) {
      this.stale = true;
      this.deps.errors.addError(err, 1, "pins.log append");
    }
  }

  /**
   * Before the store closes: keeps only live pins of blocks it holds (after its final checkpoint
   * the store agrees with them, so tombstones have done their work). Written by close().
   */
  settle(stored: (key: Buffer) => boolean): void {
    const now = this.deps.nowMs();
    for (const [keyHex, r] of this.latest) if (!pinsAt(r, now) || !stored(r.key)) this.latest.delete(keyHex);
    this.stale = true;
  }

  /** Writes what is not written yet and closes the file. */
  close(): void {
    if (this.stale) this.rewrite();
    this.log?.close();
    this.log = null;
  }

  private rewrite(): void {
    const now = this.deps.nowMs();
    // Expired soft pins are no pins: as tombstones they still take back a stale pin in the store.
    const records = [...this.latest.values()].map((r) =>
      pinsAt(r, now) || !r.softUntilMs ? r : { ...r, softUntilMs: 0 },
    );
    try {
      const fresh = FramedFile.rewrite(this.file, FORMAT, records, this.deps.io);
      this.log?.close();
      this.log = fresh;
      this.stale = false;
    } catch (err) {
      this.stale = true;
      this.deps.errors.addError(err, 1, "pins.log rewrite");
    }
  }
}
