import * as fs from "node:fs";

import { SsdBlockStore } from "../../src/store";
import type { GetResult, StoreOptions } from "../../src/store";
import { flipBit, keyOf, parseSegment, payloadFor, segmentFiles, summarize, tempDir } from "./helpers";

const OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 1 << 20, readThreads: 4 };

// Sizes around the 16-byte alignment and across pages, then sizes derived from the key.
const EDGE_SIZES = [0, 1, 15, 16, 17, 31, 4095, 4096, 4097, 65537];
const keys = Array.from({ length: 160 }, (_, i) => keyOf(`into-${i}`));
const sizeOf = (i: number) => EDGE_SIZES[i] ?? keys[i].readUInt32LE(0) % 40000;
const payloads = keys.map((key, i) => payloadFor(key, sizeOf(i)));
const sizes = payloads.map((payload) => payload.length);

/** Whether a result is a view of `arena`'s bytes, inside its range. */
function inArena(value: GetResult, arena: Buffer): boolean {
  return (
    Buffer.isBuffer(value) &&
    value.buffer === arena.buffer &&
    value.byteOffset >= arena.byteOffset &&
    value.byteOffset + value.length <= arena.byteOffset + arena.length
  );
}

describe("getManyInto", () => {
  const dir = tempDir("into");
  let store: SsdBlockStore;

  beforeAll(async () => {
    store = await SsdBlockStore.open(dir, OPTIONS);
    for (let i = 0; i < keys.length; i += 40) {
      const batch = keys.slice(i, i + 40).map((key, j) => ({ key, payload: payloads[i + j] }));
      expect(await store.put(batch)).toEqual(batch.map(() => "persisted"));
    }
    // Several segments, so the reads run in parallel over several files.
    expect(segmentFiles(dir).length).toBeGreaterThan(2);
  });

  afterAll(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("returns getMany's bytes as aligned, disjoint views of the arena, in key order", async () => {
    const arena = Buffer.alloc(SsdBlockStore.arenaBytes(sizes), 0xa5);
    const got = await store.getManyInto(keys, arena);
    expect(summarize(got, payloads)).toEqual(keys.map(() => "ok"));
    expect(summarize(await store.getMany(keys), payloads)).toEqual(keys.map(() => "ok"));
    expect(got.filter((value) => !inArena(value, arena))).toEqual([]);
    const views = got as Buffer[];
    const base = views[0].byteOffset;
    for (let i = 0; i < views.length; i++) {
      expect((views[i].byteOffset - base) % 16).toBe(0);
      if (i > 0)
        expect(views[i].byteOffset).toBeGreaterThanOrEqual(views[i - 1].byteOffset + views[i - 1].length);
    }
    // They are the arena's bytes, not copies.
    const probe = views.findIndex((view) => view.length > 0);
    arena[views[probe].byteOffset - arena.byteOffset] ^= 0xff;
    expect(views[probe][0]).toBe(payloads[probe][0] ^ 0xff);
  });

  it("allocates no external memory when the arena holds every payload", async () => {
    const total = sizes.reduce((sum, bytes) => sum + bytes, 0);
    const arena = Buffer.alloc(SsdBlockStore.arenaBytes(sizes));
    await store.getManyInto(keys, arena);
    const before = process.memoryUsage().external;
    const got = await store.getManyInto(keys, arena);
    // A collection in between can only lower it.
    expect(process.memoryUsage().external - before).toBeLessThan(total / 8);
    expect(got.filter((value) => !inArena(value, arena))).toEqual([]);
    // The measure sees the fallback's own Buffers (retried: a collection may hide them once).
    const grew: number[] = [];
    for (let attempt = 0; attempt < 5 && !(grew[grew.length - 1] >= total); attempt++) {
      const start = process.memoryUsage().external;
      const fallback = await store.getManyInto(keys, Buffer.alloc(0));
      grew.push(process.memoryUsage().external - start);
      expect(fallback.length).toBe(keys.length);
    }
    expect(Math.max(...grew)).toBeGreaterThanOrEqual(total);
  });

  it("fits what arenaBytes gives at any address", async () => {
    const needed = SsdBlockStore.arenaBytes(sizes);
    expect(needed).toBe(15 + sizes.reduce((sum, bytes) => sum + Math.ceil(bytes / 16) * 16, 0));
    const backing = Buffer.alloc(needed + 16);
    for (let shift = 1; shift < 16; shift += 7) {
      const arena = backing.subarray(shift, shift + needed);
      const got = await store.getManyInto(keys, arena);
      expect(summarize(got, payloads)).toEqual(keys.map(() => "ok"));
      expect(got.filter((value) => !inArena(value, arena))).toEqual([]);
    }
  });

  it("reads what does not fit a small arena into Buffers of their own", async () => {
    const arena = Buffer.alloc(Math.floor(SsdBlockStore.arenaBytes(sizes) / 3));
    const got = await store.getManyInto(keys, arena);
    expect(summarize(got, payloads)).toEqual(keys.map(() => "ok"));
    const inside = got.filter((value) => inArena(value, arena)).length;
    expect(inside).toBeGreaterThan(0);
    expect(inside).toBeLessThan(keys.length);
    for (const value of got)
      if (!inArena(value, arena)) expect((value as Buffer).buffer).not.toBe(arena.buffer);
  });

  it("reads everything into Buffers of their own with an empty arena", async () => {
    const empty = Buffer.alloc(0);
    const got = await store.getManyInto(keys, empty);
    expect(summarize(got, payloads)).toEqual(keys.map(() => "ok"));
    expect(got.filter((value, i) => sizes[i] > 0 && inArena(value, empty))).toEqual([]);
    // Room for the first few small payloads only.
    const tiny = Buffer.alloc(40);
    expect(summarize(await store.getManyInto(keys, tiny), payloads)).toEqual(keys.map(() => "ok"));
  });

  it("reports a missing key as KV_NOT_FOUND and reads the others", async () => {
    const missing = keyOf("into-never-written");
    const asked = [keys[3], missing, keys[40], missing, keys[41]];
    const before = store.stats();
    const arena = Buffer.alloc(SsdBlockStore.arenaBytes(sizes));
    const got = await store.getManyInto(asked, arena);
    expect(
      summarize(got, [payloads[3], Buffer.alloc(0), payloads[40], Buffer.alloc(0), payloads[41]]),
    ).toEqual(["ok", "KV_NOT_FOUND", "ok", "KV_NOT_FOUND", "ok"]);
    expect(store.stats().misses - before.misses).toBe(2);
    expect(store.stats().hits - before.hits).toBe(3);
    expect(await store.getManyInto([], arena)).toEqual([]);
  });

  it("serves two concurrent reads into different arenas, and refuses overlapping ones", async () => {
    const halves = [keys.slice(0, 80), keys.slice(80)];
    const expected = [payloads.slice(0, 80), payloads.slice(80)];
    const backing = Buffer.alloc(2 * SsdBlockStore.arenaBytes(sizes));
    const arenas = [backing.subarray(0, backing.length / 2), backing.subarray(backing.length / 2)];
    const reads = [store.getManyInto(halves[1], arenas[0]), store.getManyInto(halves[0], arenas[1])];
    expect(() => store.getManyInto(keys, backing.subarray(10, 20))).toThrow(RangeError);
    expect(() => store.getManyInto(keys, arenas[1])).toThrow(RangeError);
    const [first, second] = await Promise.all(reads);
    expect(summarize(first, expected[1])).toEqual(halves[1].map(() => "ok"));
    expect(summarize(second, expected[0])).toEqual(halves[0].map(() => "ok"));
    expect(first.filter((value) => !inArena(value, arenas[0]))).toEqual([]);
    expect(second.filter((value) => !inArena(value, arenas[1]))).toEqual([]);
    // Free again once the reads are done.
    expect(summarize(await store.getManyInto(keys, backing), payloads)).toEqual(keys.map(() => "ok"));
  });

  it("rejects arguments that are not an array of keys and a Buffer", () => {
    expect(() => store.getManyInto(keys, new Uint8Array(100) as Buffer)).toThrow(TypeError);
    expect(() => store.getManyInto([Buffer.alloc(5)], Buffer.alloc(100))).toThrow(TypeError);
    expect(() => SsdBlockStore.arenaBytes([-1])).toThrow(RangeError);
  });
});

describe("getManyInto on damaged records and a closed store", () => {
  it("gives a damaged record the code getMany gives, reading the rest of the batch", async () => {
    const dir = tempDir("into-damage");
    try {
      const store = await SsdBlockStore.open(dir, OPTIONS);
      await store.put(keys.map((key, i) => ({ key, payload: payloads[i] })));
      const records = segmentFiles(dir).flatMap(parseSegment);
      const recordOf = (i: number) => records.find((record) => record.key.equals(keys[i]))!;
      // Under the open store, as a failing disk would: one payload bit, one bit of a header's key,
      // and the newest record cut short by the end of its file.
      flipBit(recordOf(8).file, recordOf(8).offset + 64 + 4096, 2);
      flipBit(recordOf(6).file, recordOf(6).offset + 30, 0);
      flipBit(recordOf(9).file, recordOf(9).offset + 64 + 40000, 7);
      const last = records[records.length - 1];
      const lastIndex = keys.findIndex((key) => key.equals(last.key));
      fs.truncateSync(last.file, last.offset + 64 + Math.floor(last.payloadBytes / 2));
      const damaged = new Set([6, 8, 9, lastIndex]);
      const expected = (code: string) => keys.map((_, i) => (damaged.has(i) ? code : "ok"));

      // getMany answers for one damaged record; getManyInto for the others and every intact one.
      expect(await store.getMany([keys[9]])).toEqual(["KV_CORRUPT"]);
      const rest = keys.map((key, i) => (i === 9 ? keyOf("into-absent") : key));
      const arena = Buffer.alloc(SsdBlockStore.arenaBytes(sizes));
      const got = await store.getManyInto(rest, arena);
      expect(summarize(got, payloads)).toEqual(
        keys.map((_, i) => (i === 9 ? "KV_NOT_FOUND" : damaged.has(i) ? "KV_CORRUPT" : "ok")),
      );
      expect(got.filter((value) => Buffer.isBuffer(value) && !inArena(value, arena))).toEqual([]);
      expect(store.stats().corruptions).toBe(damaged.size);
      // Dropped from the index, as getMany drops them.
      expect(summarize(await store.getManyInto(keys, arena), payloads)).toEqual(expected("KV_NOT_FOUND"));
      expect(summarize(await store.getMany(keys), payloads)).toEqual(expected("KV_NOT_FOUND"));
      await store.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("waits for a pending read on close, then answers KV_CLOSED", async () => {
    const dir = tempDir("into-close");
    try {
      const store = await SsdBlockStore.open(dir, OPTIONS);
      await store.put(keys.map((key, i) => ({ key, payload: payloads[i] })));
      const arena = Buffer.alloc(SsdBlockStore.arenaBytes(sizes));
      const pending = store.getManyInto(keys, arena);
      const closing = store.close();
      expect(summarize(await pending, payloads)).toEqual(keys.map(() => "ok"));
      await closing;
      expect(await store.getManyInto(keys.slice(0, 3), arena)).toEqual([
        "KV_CLOSED",
        "KV_CLOSED",
        "KV_CLOSED",
      ]);
      expect(await store.getManyInto(keys.slice(0, 3), arena)).toEqual(await store.getMany(keys.slice(0, 3)));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
