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

/** What the store's files occupy: apparent sizes rounded to 4 KiB, and allocated blocks. */
export function dirBytes(dir: string): { roundedBytes: number; allocatedBytes: number } {
  let roundedBytes = 0;
  let allocatedBytes = 0;
  for (const name of fs.readdirSync(dir)) {
    let st: fs.Stats;
    try {
      st = fs.statSync(path.join(dir, name));
    } catch {
      continue; // deleted between readdir and stat
    }
    roundedBytes += Math.ceil(st.size / 4096) * 4096;
    allocatedBytes += st.blocks * 512;
  }
  return { roundedBytes, allocatedBytes };
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
