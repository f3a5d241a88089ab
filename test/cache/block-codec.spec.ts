import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import {
  encodeSafetensors,
  parseSafetensors,
  readSafetensorsHeader,
  SafetensorsError,
} from "../../src/util/safetensors";
import { allFinite } from "../../src/cache/block-verify";
import { Staging, removeStaleStagingDirs } from "../../src/cache/staging";
import { ChainLog, type ChainRecord } from "../../src/cache/chain-log";
import { removeTempDirs, tempDir } from "./helpers";

afterAll(removeTempDirs);

function f32(values: number[]): Buffer {
  return Buffer.from(Float32Array.from(values).buffer);
}

describe("safetensors", () => {
  it("writes files MLX loads exactly, from pieces, with an 8-byte aligned data section", () => {
    const bytes = encodeSafetensors(
      [
        { name: "x", dtype: "F32", shape: [1, 2, 2], byteLength: 16, data: [f32([1, 2]), f32([3, 4])] },
        { name: "y", dtype: "F32", shape: [3], byteLength: 12, data: [f32([-1.5, 0, 1e-7])] },
      ],
      { note: "kvpark" },
    );
    const parsed = parseSafetensors(bytes);
    expect(parsed.dataOffset % 8).toBe(0);
    expect(parsed.metadata).toEqual({ note: "kvpark" });
    expect([...parsed.tensors.entries()]).toEqual([
      ["x", { dtype: "F32", shape: [1, 2, 2], begin: 0, end: 16 }],
      ["y", { dtype: "F32", shape: [3], begin: 16, end: 28 }],
    ]);
    const staging = new Staging(path.join(tempDir("staging"), "s"));
    const header = bytes.subarray(0, parsed.dataOffset);
    const arrays = staging.bytesToArrays(header, [bytes.subarray(parsed.dataOffset)]);
    expect(arrays.x.tolist()).toEqual([
      [
        [1, 2],
        [3, 4],
      ],
    ]);
    expect(arrays.y.tolist()).toEqual([-1.5, 0, Math.fround(1e-7)]);
    expect(fs.readdirSync(staging.dir)).toEqual(["restore.safetensors"]);
    staging.close();
    expect(fs.existsSync(staging.dir)).toBe(false);
  });

  it("loads a small batch exactly from a staging file a larger batch or prepare() left larger", () => {
    const staging = new Staging(path.join(tempDir("staging"), "s"));
    const file = path.join(staging.dir, "restore.safetensors");
    staging.prepare(1 << 20);
    expect(fs.statSync(file).size).toBe(1 << 20);
    const batch = (values: number[]) => {
      const bytes = encodeSafetensors(
        [
          {
            name: "x",
            dtype: "F32",
            shape: [values.length],
            byteLength: 4 * values.length,
            data: [f32(values)],
          },
        ],
        {},
      );
      const parsed = parseSafetensors(bytes);
      return staging.bytesToArrays(bytes.subarray(0, parsed.dataOffset), [bytes.subarray(parsed.dataOffset)]);
    };
    const large = Array.from({ length: 300_000 }, (_, i) => i);
    expect(batch(large).x.shape).toEqual([300_000]);
    expect(fs.statSync(file).size).toBeGreaterThan(1 << 20);
    // The bytes of the larger batch stay behind the smaller one's tensors, and are never read.
    expect(batch([7, -8, 9]).x.tolist()).toEqual([7, -8, 9]);
    staging.prepare(1024);
    expect(fs.statSync(file).size).toBeGreaterThan(1 << 20);
    staging.close();
  });

  it("reads what MLX writes (null metadata, unaligned data)", () => {
    const staging = new Staging(path.join(tempDir("staging"), "s"));
    const { bytes, file } = staging.arraysToBytes({ a: mx.array([1, 2, 3], mx.float32) });
    expect(file.metadata).toEqual({});
    expect(bytes.subarray(file.dataOffset).equals(f32([1, 2, 3]))).toBe(true);
    staging.close();
  });

  it("refuses malformed files with a reason", () => {
    const good = encodeSafetensors(
      [{ name: "x", dtype: "F32", shape: [2], byteLength: 8, data: [f32([1, 2])] }],
      {},
    );
    const withHeader = (json: string, data = Buffer.alloc(0)) => {
      const h = Buffer.from(json);
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(h.length));
      return Buffer.concat([len, h, data]);
    };
    const reason = (bytes: Buffer) => {
      try {
        parseSafetensors(bytes);
      } catch (err) {
        expect(err).toBeInstanceOf(SafetensorsError);
        return (err as Error).message;
      }
      return "accepted";
    };
    expect(reason(good)).toBe("accepted");
    expect(reason(good.subarray(0, 5))).toBe("5 bytes: too short for a header");
    expect(reason(Buffer.concat([good, Buffer.alloc(4)]))).toBe("tensors cover 8 data bytes of 12");
    const huge = Buffer.from(good);
    huge.writeBigUInt64LE(1n << 40n);
    expect(reason(huge)).toBe("header length 1099511627776 exceeds the file or 16777216 bytes");
    expect(reason(withHeader("{nope"))).toMatch(/^header is not JSON/);
    expect(reason(withHeader("[]"))).toBe("header is not a JSON object");
    expect(reason(withHeader('{"x":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}', Buffer.alloc(4)))).toBe(
      'tensor x: unknown dtype "Q4"',
    );
    expect(
      reason(withHeader('{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', Buffer.alloc(4))),
    ).toBe("tensor x: 4 bytes for shape [2] of F32");
    expect(
      reason(
        withHeader(
          '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
          Buffer.alloc(4),
        ),
      ),
    ).toBe("tensor y starts at 0, expected 4 (gap or overlap)");
    expect(reason(withHeader('{"__metadata__":{"a":1}}'))).toBe("__metadata__.a is not a string");
  });

  it("reads a checkpoint's header of any dtype from its file; kvpark's own files refuse other dtypes", () => {
    const json = Buffer.from(
      '{"__metadata__":{"format":"pt"},"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}',
    );
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    const bytes = Buffer.concat([length, json, Buffer.alloc(16)]);
    const file = path.join(tempDir("checkpoint"), "model.safetensors");
    fs.writeFileSync(file, bytes);
    expect([...readSafetensorsHeader(file)]).toEqual([
      ["a", { dtype: "F64", shape: [2], begin: 0, end: 16 }],
    ]);
    expect(() => parseSafetensors(bytes)).toThrow(new SafetensorsError('tensor a: unknown dtype "F64"'));
    fs.truncateSync(file, bytes.length - 1);
    expect(() => readSafetensorsHeader(file)).toThrow(
      new SafetensorsError("tensor a ends at byte 16 of a 15-byte data section (truncated?)"),
    );
  });
});

describe("finite check", () => {
  it("finds NaN and both infinities at any byte offset, and passes every finite float32", () => {
    const finite = [0, -0, 1, -1, 3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -1e-45, 1.17e-38];
    for (const offset of [0, 1, 2, 3]) {
      const at = (values: number[]) => {
        const bytes = Buffer.alloc(offset + values.length * 4);
        f32(values).copy(bytes, offset);
        return bytes.subarray(offset);
      };
      expect(allFinite(at(finite))).toBe(true);
      expect(allFinite(at([]))).toBe(true);
      for (const bad of [Number.NaN, Infinity, -Infinity]) {
        expect(allFinite(at([...finite, bad]))).toBe(false);
        expect(allFinite(at([bad, ...finite]))).toBe(false);
      }
      // A NaN with a payload and the sign bit set.
      const nan = at([1, 2]);
      nan.writeUInt32LE(0xffc00001, 4);
      expect(allFinite(nan)).toBe(false);
    }
  });
});

describe("staging directories", () => {
  it("left behind by a dead engine are removed; live ones are kept", () => {
    const base = tempDir("shm");
    const deadPid = spawnSync(process.execPath, ["-e", ""]).pid!;
    for (const name of [`kvpark-${deadPid}`, `kvpark-${process.pid}`, "other"])
      fs.mkdirSync(path.join(base, name));
    expect(removeStaleStagingDirs(base)).toEqual([`kvpark-${deadPid}`]);
    expect(fs.readdirSync(base).sort()).toEqual([`kvpark-${process.pid}`, "other"].sort());
  });
});

describe("chain log", () => {
  const record = (i: number): ChainRecord => ({
    key: Buffer.alloc(32, i),
    parent: Buffer.alloc(32, i + 100),
    root: Buffer.alloc(32, 7),
    tokenIds: Uint32Array.from([i, i + 1, 0xffffffff]),
    storedBytes: 1000 + i,
  });

  it("round-trips records, loses a torn tail, and resynchronizes after a damaged record", () => {
    const file = path.join(tempDir("log"), "chain.log");
    expect(ChainLog.read(file)).toBeNull();
    const log = ChainLog.rewrite(file, [record(1)]);
    log.append([record(2), record(3)]);
    log.close();
    const clean = { firstAfterDamage: 3, damagedRanges: 0, skippedBytes: 0, tornBytes: 0 };
    const full = fs.readFileSync(file);
    expect(ChainLog.read(file)).toEqual({
      records: [record(1), record(2), record(3)],
      ...clean,
      fileBytes: full.length,
    });

    fs.writeFileSync(file, full.subarray(0, full.length - 3)); // torn last record
    expect(ChainLog.read(file)).toMatchObject({ records: [record(1), record(2)], tornBytes: 128 - 3 });

    const damaged = Buffer.from(full);
    damaged[16 + 4 + 5] ^= 0xff; // a byte of the first record's key
    fs.writeFileSync(file, damaged);
    // The records after it are read, as found after damage (a caller may check them further).
    expect(ChainLog.read(file)).toMatchObject({
      records: [record(2), record(3)],
      firstAfterDamage: 0,
      damagedRanges: 1,
      skippedBytes: 128,
    });
    expect(ChainLog.read(file, undefined, (_, afterDamage) => !afterDamage)).toMatchObject({
      records: [],
      tornBytes: full.length - 16,
    });

    fs.writeFileSync(file, Buffer.from("not a chain log"));
    expect(ChainLog.read(file)).toBeNull();
  });
});
