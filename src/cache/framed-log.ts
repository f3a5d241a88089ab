import * as crypto from "node:crypto";
import * as path from "node:path";
import { bytesWritten, writeAllAt, type FileIo } from "./file-io";

/**
 * The container of the SSD tier's side files (chain.log, pins.log): a 16-byte header (8-byte
 * magic, u32 version, u32 flags), then records back to back, each framed as
 *
 *   u32 bodyBytes, body, first 8 bytes of SHA-256(body)
 *
 * A reader walks the records; at a record that does not verify (a flipped bit, a torn append) it
 * scans forward, byte by byte, for the next offset where a frame verifies and goes on from there,
 * so damage costs the records it hit and nothing after them. A writer appends at the end of the
 * last good record and, when a write fails part-way, cuts the file back to the last whole record,
 * so a torn record never sits between good ones.
 */
export interface FrameFormat<T> {
  /** 8 bytes. */
  magic: Buffer;
  version: number;
  bodyBytesMin: number;
  bodyBytesMax: number;
  /** Cheap checks of a candidate body before its checksum is computed (resynchronization). */
  plausible(bytes: Buffer, bodyAt: number, bodyBytes: number): boolean;
  /** The record of a verified body, or null when its fields make no sense. */
  decode(body: Buffer): T | null;
  encode(record: T): Buffer;
}

/** What a read found. */
export interface FramedRead<T> {
  records: T[];
  /** Index in `records` of the first record found after damage; records.length when there was none. */
  firstAfterDamage: number;
  /** Stretches of damaged bytes passed over to a verifiable record. */
  damagedRanges: number;
  skippedBytes: number;
  /** Bytes after the last verifiable record (a torn append, or damage at the end). */
  tornBytes: number;
}

export const FILE_HEADER_BYTES = 16;
const CHECKSUM_BYTES = 8;
const FRAME_BYTES = 4 + CHECKSUM_BYTES;

function checksum(body: Buffer): Buffer {
  return crypto.createHash("sha256").update(body).digest().subarray(0, CHECKSUM_BYTES);
}

/** The file header of a format. */
export function fileHeader(format: FrameFormat<unknown>): Buffer {
  const header = Buffer.alloc(FILE_HEADER_BYTES);
  format.magic.copy(header, 0);
  header.writeUInt32LE(format.version, 8);
  return header;
}

/** One framed record. */
export function frame<T>(format: FrameFormat<T>, record: T): Buffer {
  const body = format.encode(record);
  const out = Buffer.allocUnsafe(FRAME_BYTES + body.length);
  out.writeUInt32LE(body.length, 0);
  body.copy(out, 4);
  checksum(body).copy(out, 4 + body.length);
  return out;
}

/**
 * Reads the records of a file's bytes; null when the header is not this format's (too short,
 * another magic or another version). `accept` may refuse a record that verified (it is then
 * treated as damage); it is told whether damage came before it.
 */
export function readFramed<T>(
  bytes: Buffer,
  format: FrameFormat<T>,
  accept: (record: T, afterDamage: boolean) => boolean = () => true,
): FramedRead<T> | null {
  if (
    bytes.length < FILE_HEADER_BYTES ||
    !bytes.subarray(0, 8).equals(format.magic) ||
    bytes.readUInt32LE(8) !== format.version
  ) {
    return null;
  }
  const frameAt = (at: number, afterDamage: boolean): { record: T; end: number } | null => {
    if (at + FRAME_BYTES + format.bodyBytesMin > bytes.length) return null;
    const bodyBytes = bytes.readUInt32LE(at);
    const end = at + FRAME_BYTES + bodyBytes;
    if (bodyBytes < format.bodyBytesMin || bodyBytes > format.bodyBytesMax || end > bytes.length) return null;
    if (!format.plausible(bytes, at + 4, bodyBytes)) return null;
    const body = bytes.subarray(at + 4, at + 4 + bodyBytes);
    if (!checksum(body).equals(bytes.subarray(end - CHECKSUM_BYTES, end))) return null;
    const record = format.decode(body);
    return record !== null && accept(record, afterDamage) ? { record, end } : null;
  };
  const out: FramedRead<T> = {
    records: [],
    firstAfterDamage: -1,
    damagedRanges: 0,
    skippedBytes: 0,
    tornBytes: 0,
  };
  let afterDamage = false;
  for (let at = FILE_HEADER_BYTES; at < bytes.length;) {
    let found = frameAt(at, afterDamage);
    if (!found) {
      let next = at + 1;
      for (; next + FRAME_BYTES + format.bodyBytesMin <= bytes.length; next++) {
        found = frameAt(next, true);
        if (found) break;
      }
      if (!found) {
        out.tornBytes = bytes.length - at;
        break;
      }
      if (!afterDamage) out.firstAfterDamage = out.records.length;
      afterDamage = true;
      out.damagedRanges++;
      out.skippedBytes += next - at;
    }
    out.records.push(found.record);
    at = found.end;
  }
  if (out.firstAfterDamage < 0) out.firstAfterDamage = out.records.length;
  return out;
}

/** A framed file open for appending, at the end of its last good record. */
export class FramedFile<T> {
  /** Records in the file, live or not; drives compaction. */
  recordCount = 0;

  private constructor(
    readonly file: string,
    private readonly format: FrameFormat<T>,
    private readonly io: FileIo,
    private fd: number,
    /** End of the last whole record: where the next append goes. */
    private end: number,
  ) {}

  /** Writes a fresh file holding `records` (temp file, fdatasync, rename, directory fsync) and opens it. */
  static rewrite<T>(file: string, format: FrameFormat<T>, records: Iterable<T>, io: FileIo): FramedFile<T> {
    const temp = `${file}.tmp`;
    const pieces = [fileHeader(format)];
    for (const record of records) pieces.push(frame(format, record));
    const bytes = Buffer.concat(pieces);
    const fd = io.open(temp, "w");
    try {
      writeAllAt(io, fd, bytes, 0);
      io.syncNow(fd);
    } catch (err) {
      io.close(fd);
      // Give the space back: a half-written temp file is never read.
      io.remove(temp);
      throw err;
    }
    io.close(fd);
    try {
      io.rename(temp, file);
    } catch (err) {
      io.remove(temp);
      throw err;
    }
    io.syncDir(path.dirname(file));
    const opened = new FramedFile(file, format, io, io.open(file, "r+"), bytes.length);
    opened.recordCount = pieces.length - 1;
    return opened;
  }

  /**
   * Opens an existing file to append after its first `end` bytes (what a reader found good), cutting
   * off what follows when it can; what it cannot cut is overwritten by the next appends.
   */
  static reopen<T>(
    file: string,
    format: FrameFormat<T>,
    end: number,
    records: number,
    io: FileIo,
  ): FramedFile<T> {
    const fd = io.open(file, "r+");
    try {
      if (io.size(fd) > end) io.truncate(fd, end);
    } catch {
      // Left for the next appends to overwrite; a reader skips what remains.
    }
    const opened = new FramedFile(file, format, io, fd, end);
    opened.recordCount = records;
    return opened;
  }

  /**
   * Appends records (durable once sync() resolves). When a write fails, the records written whole
   * stay, the file is cut back after them, and the error is thrown with `recordsWritten` set.
   */
  append(records: readonly T[]): void {
    if (records.length === 0) return;
    const frames = records.map((r) => frame(this.format, r));
    try {
      writeAllAt(this.io, this.fd, Buffer.concat(frames), this.end);
    } catch (err) {
      const done = bytesWritten(err);
      let whole = 0;
      let kept = 0;
      while (whole < frames.length && kept + frames[whole].length <= done) kept += frames[whole++].length;
      this.end += kept;
      this.recordCount += whole;
      try {
        this.io.truncate(this.fd, this.end);
      } catch {
        // The torn bytes stay past `end`: the next append overwrites them.
      }
      throw Object.assign(err as Error, { recordsWritten: whole });
    }
    for (const f of frames) this.end += f.length;
    this.recordCount += records.length;
  }

  /** fdatasync on the I/O thread pool. */
  sync(): Promise<void> {
    return this.io.sync(this.fd);
  }

  /** fdatasync on this thread. */
  syncNow(): void {
    this.io.syncNow(this.fd);
  }

  close(): void {
    if (this.fd >= 0) this.io.close(this.fd);
    this.fd = -1;
  }
}

/** Records of a failed FramedFile.append that were written whole. */
export function recordsWritten(err: unknown): number {
  const n = (err as { recordsWritten?: unknown }).recordsWritten;
  return typeof n === "number" ? n : 0;
}
