import * as fs from "node:fs";

import { StoreError } from "../../src/store";
import type { BlockStore, StoreOptions } from "../../src/store";
import { keyOf, payloadFor, tempDir } from "./helpers";

/** Opens a store in dir; tests pass option overrides. */
export type StoreFactory = (dir: string, options?: Partial<StoreOptions>) => Promise<BlockStore>;

/**
 * The contract every BlockStore implementation must keep. Run unchanged against
 * the native store, and against any fault-injecting or in-memory stand-in.
 */
export function describeStoreCompliance(name: string, factory: StoreFactory): void {
  describe(`BlockStore compliance: ${name}`, () => {
    let dir: string;
    let store: BlockStore;

    beforeEach(async () => {
      dir = tempDir("compliance");
      store = await factory(dir);
    });

    afterEach(async () => {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it("returns exactly the bytes that were put", async () => {
      const entries = [0, 1, 1000, 65536, 300001].map((bytes, i) => ({
        key: keyOf(`roundtrip-${i}`),
        payload: payloadFor(keyOf(`roundtrip-${i}`), bytes),
      }));
      expect(await store.put(entries)).toEqual([
        "persisted",
        "persisted",
        "persisted",
        "persisted",
        "persisted",
      ]);
      const got = await store.getMany(entries.map((e) => e.key));
      expect(got).toEqual(entries.map((e) => e.payload));
      const stats = store.stats();
      expect([stats.blocks, stats.hits, stats.misses, stats.blocksWritten]).toEqual([5, 5, 0, 5]);
      expect(stats.liveBytes).toBe(5 * 64 + 0 + 1 + 1000 + 65536 + 300001);
    });

    it("reports misses per key and counts them", async () => {
      const present = keyOf("present");
      await store.put([{ key: present, payload: Buffer.from("abc") }]);
      const got = await store.getMany([keyOf("absent-1"), present, keyOf("absent-2")]);
      expect(got).toEqual(["KV_NOT_FOUND", Buffer.from("abc"), "KV_NOT_FOUND"]);
      expect([store.stats().hits, store.stats().misses]).toEqual([1, 2]);
    });

    it("overwrites a key with its newest payload, also within one batch", async () => {
      const key = keyOf("overwrite");
      await store.put([{ key, payload: Buffer.from("first") }]);
      expect(await store.put([{ key, payload: Buffer.from("second") }])).toEqual(["persisted"]);
      expect(await store.getMany([key])).toEqual([Buffer.from("second")]);
      expect(
        await store.put([
          { key, payload: Buffer.from("third") },
          { key, payload: Buffer.from("fourth") },
        ]),
      ).toEqual(["persisted", "persisted"]);
      expect(await store.getMany([key, key])).toEqual([Buffer.from("fourth"), Buffer.from("fourth")]);
      expect(store.stats().blocks).toBe(1);
    });

    it("deletes durably and reports unknown keys", async () => {
      const kept = keyOf("kept");
      const gone = keyOf("gone");
      await store.put([
        { key: kept, payload: Buffer.from("k") },
        { key: gone, payload: Buffer.from("g") },
      ]);
      expect(await store.delete(gone)).toBe("deleted");
      expect(await store.delete(gone)).toBe("KV_NOT_FOUND");
      expect([store.has(kept), store.has(gone)]).toEqual([true, false]);
      await store.close();
      store = await factory(dir);
      expect([store.has(kept), store.has(gone)]).toEqual([true, false]);
      expect(await store.getMany([kept, gone])).toEqual([Buffer.from("k"), "KV_NOT_FOUND"]);
    });

    it("keeps blocks across close and reopen", async () => {
      const entries = Array.from({ length: 50 }, (_, i) => ({
        key: keyOf(`reopen-${i}`),
        payload: payloadFor(keyOf(`reopen-${i}`), 1000 + i * 97),
      }));
      await store.put(entries);
      await store.close();
      store = await factory(dir);
      expect(store.stats().blocks).toBe(50);
      expect(await store.getMany(entries.map((e) => e.key))).toEqual(entries.map((e) => e.payload));
    });

    it("iterates keys least recently used first, and keeps that order across reopen", async () => {
      const keys = ["a", "b", "c", "d"].map((label) => keyOf(`order-${label}`));
      await store.put(keys.map((key) => ({ key, payload: Buffer.from("x") })));
      await store.getMany([keys[1]]);
      await store.getMany([keys[0]]);
      const seen: Buffer[] = [];
      for await (const key of store.keys()) seen.push(key);
      expect(seen).toEqual([keys[2], keys[3], keys[1], keys[0]]);
      await store.close();
      store = await factory(dir);
      const reopened: Buffer[] = [];
      for await (const key of store.keys()) reopened.push(key);
      expect(reopened).toEqual([keys[2], keys[3], keys[1], keys[0]]);
    });

    it("pins and unpins existing keys only", async () => {
      const key = keyOf("pin");
      expect(store.pin(key, "hard")).toBe("KV_NOT_FOUND");
      expect(store.unpin(key)).toBe(false);
      await store.put([{ key, payload: Buffer.alloc(100) }]);
      expect(store.pin(key, "hard")).toBe("pinned");
      expect(store.pin(key, { ttlMs: 60000 })).toBe("pinned");
      expect([store.stats().pinnedBlocks, store.stats().pinnedBytes]).toEqual([1, 164]);
      expect(store.unpin(key)).toBe(true);
      expect([store.stats().pinnedBlocks, store.stats().pinnedBytes]).toEqual([0, 0]);
    });

    it("refuses to pin more than pinnedBytesMax", async () => {
      await store.close();
      store = await factory(dir, { pinnedBytesMax: 1000 });
      const a = keyOf("pin-a");
      const b = keyOf("pin-b");
      await store.put([
        { key: a, payload: Buffer.alloc(600) },
        { key: b, payload: Buffer.alloc(600) },
      ]);
      expect(store.pin(a, "hard")).toBe("pinned");
      expect(store.pin(b, { ttlMs: 1000 })).toBe("KV_CAPACITY");
      expect(store.unpin(a)).toBe(true);
      expect(store.pin(b, { ttlMs: 1000 })).toBe("pinned");
    });

    it("rejects malformed arguments as programmer errors", async () => {
      const short = Buffer.alloc(31);
      expect(() => store.has(short)).toThrow(TypeError);
      expect(() => store.getMany([short])).toThrow(TypeError);
      expect(() => store.put([{ key: short, payload: Buffer.alloc(1) }])).toThrow(TypeError);
      expect(() => store.put([{ key: keyOf("x"), payload: "text" as unknown as Buffer }])).toThrow(TypeError);
      expect(() => store.pin(keyOf("x"), { ttlMs: -1 })).toThrow(RangeError);
      const other = tempDir("bad-options");
      await expect(factory(other, { bytesMax: 1000 })).rejects.toThrow(RangeError);
      fs.rmSync(other, { recursive: true, force: true });
    });

    it("returns KV_CAPACITY for a payload larger than a segment, and writes the rest", async () => {
      await store.close();
      store = await factory(dir, { segmentBytes: 1 << 20, bytesMax: 8 << 20 });
      const small = keyOf("small");
      const huge = keyOf("huge");
      expect(
        await store.put([
          { key: huge, payload: Buffer.alloc(1 << 20) },
          { key: small, payload: Buffer.from("s") },
        ]),
      ).toEqual(["KV_CAPACITY", "persisted"]);
      expect(await store.getMany([huge, small])).toEqual(["KV_NOT_FOUND", Buffer.from("s")]);
    });

    it("lets only one open store hold a directory", async () => {
      const second = factory(dir);
      await expect(second).rejects.toBeInstanceOf(StoreError);
      await expect(second).rejects.toMatchObject({ code: "KV_LOCKED" });
    });

    it("answers KV_CLOSED after close", async () => {
      const key = keyOf("closed");
      await store.put([{ key, payload: Buffer.from("c") }]);
      await store.close();
      expect(await store.put([{ key, payload: Buffer.from("d") }])).toEqual(["KV_CLOSED"]);
      expect(await store.getMany([key])).toEqual(["KV_CLOSED"]);
      expect(() => store.has(key)).toThrow(expect.objectContaining({ code: "KV_CLOSED" }));
      await store.close(); // idempotent
      store = await factory(dir);
      expect(await store.getMany([key])).toEqual([Buffer.from("c")]);
    });
  });
}
