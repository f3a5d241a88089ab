import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

/** A fresh empty directory under the OS temp dir. */
export function tempDir(label: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `kvpark-store-${label}-`));
}

/** A 32-byte key derived from a label, so tests can name blocks. */
export function keyOf(label: string): Buffer {
  return crypto.createHash("sha256").update(label).digest();
}

/** Deterministic payload bytes for a key: any holder of the key can check a read. */
export function payloadFor(key: Buffer, bytes: number): Buffer {
  const cipher = crypto.createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  return cipher.update(Buffer.alloc(bytes));
}

/** Payload whose length is also derived from the key, in [minBytes, maxBytes]. */
export function sizedPayloadFor(key: Buffer, minBytes: number, maxBytes: number): Buffer {
  return payloadFor(key, minBytes + (key.readUInt32LE(0) % (maxBytes - minBytes + 1)));
}

export interface DirBytes {
  /** Apparent sizes rounded up to 4 KiB, as the store accounts them. */
  roundedBytes: number;
  /** Blocks the filesystem allocated. */
  allocatedBytes: number;
}

/** One readdir + stat pass: what each file looked like when it was stat-ed, or undefined if one vanished. */
function statPass(
  dir: string,
  betweenStats?: (name: string) => void,
): Map<string, fs.BigIntStats> | undefined {
  const files = new Map<string, fs.BigIntStats>();
  for (const name of fs.readdirSync(dir).sort()) {
    try {
      files.set(name, fs.lstatSync(path.join(dir, name), { bigint: true }));
    } catch {
      return undefined; // deleted between readdir and stat: the store moved on mid-pass
    }
    betweenStats?.(name);
  }
  return files;
}

function samePass(a: Map<string, fs.BigIntStats>, b: Map<string, fs.BigIntStats>): boolean {
  if (a.size !== b.size) return false;
  for (const [name, x] of a) {
    const y = b.get(name);
    if (y === undefined) return false;
    if (x.ino !== y.ino || x.size !== y.size || x.blocks !== y.blocks || x.ctimeNs !== y.ctimeNs)
      return false;
  }
  return true;
}

/**
 * What the directory's files occupied at one instant, or undefined if it never held still for
 * two passes in a row within `passesMax`.
 *
 * A single pass is not a snapshot: its stats are taken one after another while the store keeps
 * working, so a pass can count a compacted segment before its deletion and the segment that took
 * its blocks after it grew, a total the directory never held. A pass is trusted only when the next
 * one sees every file unchanged (inode, size, blocks, ctime): segments only grow and their names
 * are never reused, and a new INDEX arrives by rename with a new inode and ctime, so at every moment
 * between the two passes at least these files with these sizes were there. The result is therefore
 * never more than what the directory really held.
 * `betweenStats` runs after each stat (tests use it to move the directory on mid-pass).
 */
export function settledDirBytes(
  dir: string,
  passesMax = 8,
  betweenStats?: (name: string) => void,
): DirBytes | undefined {
  let previous = statPass(dir, betweenStats);
  for (let pass = 1; pass < passesMax; pass++) {
    const current = statPass(dir, betweenStats);
    if (previous !== undefined && current !== undefined && samePass(previous, current)) {
      let roundedBytes = 0;
      let allocatedBytes = 0;
      for (const st of current.values()) {
        roundedBytes += Math.ceil(Number(st.size) / 4096) * 4096;
        allocatedBytes += Number(st.blocks) * 512;
      }
      return { roundedBytes, allocatedBytes };
    }
    previous = current;
  }
  return undefined;
}

/** What a directory no one is writing to occupies: apparent sizes rounded to 4 KiB, and allocated blocks. */
export function dirBytes(dir: string): DirBytes {
  const bytes = settledDirBytes(dir, 100);
  if (bytes === undefined) throw new Error(`${dir} kept changing while it was measured`);
  return bytes;
}

/** One record as FORMAT.md lays it out inside a segment file. */
export interface ParsedRecord {
  file: string;
  offset: number;
  kind: number;
  payloadBytes: number;
  seqNo: bigint;
  key: Buffer;
}

/** Walks a segment file by the layout in native/FORMAT.md. */
export function parseSegment(file: string): ParsedRecord[] {
  const bytes = fs.readFileSync(file);
  if (bytes.subarray(0, 8).toString("latin1") !== "KVPKSEG\0") throw new Error(`${file}: bad magic`);
  const records: ParsedRecord[] = [];
  let offset = bytes.readUInt32LE(20);
  while (offset + 64 <= bytes.length) {
    if (bytes.readUInt32LE(offset) !== 0x4352564b) throw new Error(`${file}@${offset}: bad record magic`);
    const payloadBytes = bytes.readUInt32LE(offset + 8);
    records.push({
      file,
      offset,
      kind: bytes.readUInt16LE(offset + 4),
      payloadBytes,
      seqNo: bytes.readBigUInt64LE(offset + 16),
      key: Buffer.from(bytes.subarray(offset + 24, offset + 56)),
    });
    offset += 64 + payloadBytes;
  }
  return records;
}

/** Segment files of a store directory, oldest first. */
export function segmentFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((name) => /^seg-[0-9a-f]{8}\.kvs$/.test(name))
    .sort()
    .map((name) => path.join(dir, name));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Per-key summary of getMany results against expected payloads: "ok", "WRONG" or the code. */
export function summarize(got: readonly (Buffer | string)[], expected: readonly Buffer[]): string[] {
  return got.map((value, i) =>
    Buffer.isBuffer(value) ? (value.equals(expected[i]) ? "ok" : "WRONG") : value,
  );
}

/** A seeded xorshift32 generator in [0, 1): fault positions are reproducible from the seed. */
export function rng(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
}

/** Flips one bit of one byte of a file in place. */
export function flipBit(file: string, offset: number, bit: number): void {
  const fd = fs.openSync(file, "r+");
  try {
    const byte = Buffer.alloc(1);
    if (fs.readSync(fd, byte, 0, 1, offset) !== 1) throw new Error(`${file}: no byte at ${offset}`);
    byte[0] ^= 1 << bit;
    fs.writeSync(fd, byte, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** Copies the regular files of a store directory (as a kill -9 would leave them, if the store is open). */
export function copyDir(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  for (const name of fs.readdirSync(from)) {
    const source = path.join(from, name);
    if (fs.statSync(source).isFile()) fs.copyFileSync(source, path.join(to, name));
  }
}

let addonChecksum: ((bytes: Buffer) => bigint) | undefined;
/** XXH3-64 (seed 0) as native/FORMAT.md uses it, computed by the addon's own xxHash. */
export function xxh3(bytes: Buffer): bigint {
  addonChecksum ??= (
    require(path.resolve(__dirname, "..", "..", "native", "build", "Release", "kvpark_store.node")) as {
      checksum: (bytes: Buffer) => bigint;
    }
  ).checksum;
  return addonChecksum(bytes);
}

/** Rewrites a segment header's checksum (FORMAT.md: XXH3-64 of bytes [0, 56) at offset 56). */
export function resealSegmentHeader(file: string): void {
  const bytes = fs.readFileSync(file);
  bytes.writeBigUInt64LE(xxh3(bytes.subarray(0, 56)), 56);
  fs.writeFileSync(file, bytes);
}

/** Rewrites an INDEX checksum (FORMAT.md: XXH3-64 of [0, 72) then [80, end) at offset 72). */
export function resealIndex(file: string): void {
  const bytes = fs.readFileSync(file);
  bytes.writeBigUInt64LE(xxh3(Buffer.concat([bytes.subarray(0, 72), bytes.subarray(80)])), 72);
  fs.writeFileSync(file, bytes);
}
