import * as fs from "node:fs";
import * as path from "node:path";

import { openStore } from "../../src/store";
import type { BlockStore, StoreOptions } from "../../src/store";
import {
  flipBit,
  keyOf,
  parseSegment,
  rng,
  segmentFiles,
  sizedPayloadFor,
  summarize,
  tempDir,
} from "./helpers";

const OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 256 << 10 };
const BLOCKS = 80;

describe("corruption", () => {
  let dir: string;
  let store: BlockStore;
  const seed = Date.now() % 100000;
  const random = rng(seed);
  const keys = Array.from({ length: BLOCKS }, (_, i) => keyOf(`corrupt-${i}`));
  const payload = (key: Buffer) => sizedPayloadFor(key, 4000, 40000);

  beforeAll(async () => {
    dir = tempDir("corruption");
    store = await openStore(dir, OPTIONS);
    for (let i = 0; i < BLOCKS; i += 10) {
      await store.put(keys.slice(i, i + 10).map((key) => ({ key, payload: payload(key) })));
    }
  });

  afterAll(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it(`returns KV_CORRUPT exactly for damaged blocks and correct bytes for the rest (seed ${seed})`, async () => {
    const files = segmentFiles(dir);
    expect(files.length).toBeGreaterThanOrEqual(4);
    const records = files.flatMap(parseSegment);
    expect(records.length).toBe(BLOCKS);
    const damaged = new Set<string>();

    // Bit flips anywhere in a record: header or payload.
    const shuffled = [...records].sort(() => random() - 0.5);
    for (const record of shuffled.slice(0, 12)) {
      const at = record.offset + Math.floor(random() * (64 + record.payloadBytes));
      flipBit(record.file, at, Math.floor(random() * 8));
      damaged.add(record.key.toString("hex"));
    }
    // Truncation of a sealed segment in the middle of one of its records.
    const victimFile = files[1];
    const inVictim = records.filter((record) => record.file === victimFile);
    const cutRecord = inVictim[Math.floor(inVictim.length / 2)];
    const cutAt = cutRecord.offset + 1 + Math.floor(random() * (63 + cutRecord.payloadBytes));
    fs.truncateSync(victimFile, cutAt);
    for (const record of inVictim) {
      if (record.offset + 64 + record.payloadBytes > cutAt) damaged.add(record.key.toString("hex"));
    }

    const payloads = keys.map(payload);
    const got = await store.getMany(keys);
    expect(summarize(got, payloads)).toEqual(
      keys.map((key) => (damaged.has(key.toString("hex")) ? "KV_CORRUPT" : "ok")),
    );
    expect(store.stats().corruptions).toBe(damaged.size);
    expect(store.stats().blocks).toBe(BLOCKS - damaged.size);

    // Damaged blocks are gone from the index; asking again is a plain miss.
    const again = await store.getMany(keys);
    expect(summarize(again, payloads)).toEqual(
      keys.map((key) => (damaged.has(key.toString("hex")) ? "KV_NOT_FOUND" : "ok")),
    );
    expect(store.stats().corruptions).toBe(damaged.size);

    // The store keeps working: new writes land and read back, also after reopen.
    const fresh = Array.from({ length: 20 }, (_, i) => keyOf(`after-corruption-${i}`));
    expect(await store.put(fresh.map((key) => ({ key, payload: payload(key) })))).toEqual(
      fresh.map(() => "persisted"),
    );
    await store.close();
    store = await openStore(dir, OPTIONS);
    const all = [...keys, ...fresh];
    const reopened = await store.getMany(all);
    expect(summarize(reopened, all.map(payload))).toEqual(
      all.map((key) => (damaged.has(key.toString("hex")) ? "KV_NOT_FOUND" : "ok")),
    );
    expect(store.stats().blocks).toBe(BLOCKS - damaged.size + fresh.length);
  });

  it("rebuilds a damaged index from the segments and still serves verified bytes", async () => {
    const before: Buffer[] = [];
    for await (const key of store.keys()) before.push(key);
    await store.close();
    const index = path.join(dir, "INDEX");
    flipBit(index, 80 + Math.floor(random() * (fs.statSync(index).size - 80)), 3);
    store = await openStore(dir, OPTIONS);
    expect(store.stats().indexRebuilds).toBe(1);
    const after = new Set<string>();
    for await (const key of store.keys()) after.add(key.toString("hex"));
    // Every block that was indexed comes back; blocks dropped for corruption may
    // reappear only if their record still verifies (it never does: its bytes are damaged).
    expect(before.filter((key) => !after.has(key.toString("hex")))).toEqual([]);
    expect(after.size).toBe(before.length);
    const got = await store.getMany(before);
    expect(summarize(got, before.map(payload))).toEqual(before.map(() => "ok"));
  });

  it("skips and counts bad records in the replayed tail, truncating a torn end", async () => {
    await store.close();
    const tailDir = tempDir("tail");
    try {
      // checkpointEveryBytes beyond what is written: everything is tail, replayed on open.
      const options = { ...OPTIONS, checkpointEveryBytes: 1 << 30 };
      let tailStore = await openStore(tailDir, options);
      const tailKeys = Array.from({ length: 30 }, (_, i) => keyOf(`tail-${i}`));
      await tailStore.put(tailKeys.map((key) => ({ key, payload: payload(key) })));
      // Copy the live files as a crash would leave them: no final checkpoint.
      const crashed = tempDir("tail-crashed");
      for (const name of fs.readdirSync(tailDir))
        fs.copyFileSync(path.join(tailDir, name), path.join(crashed, name));
      await tailStore.close();
      const files = segmentFiles(crashed);
      const last = files[files.length - 1];
      const records = files.flatMap(parseSegment);
      // Damage the payload of one record in the middle of the first segment ...
      const middle = records.filter((record) => record.file === files[0])[2];
      flipBit(middle.file, middle.offset + 64 + 7, 1);
      // ... and tear the last record in half, as a crash mid-append would.
      const lastRecord = records[records.length - 1];
      fs.truncateSync(last, lastRecord.offset + 64 + Math.floor(lastRecord.payloadBytes / 2));
      tailStore = await openStore(crashed, options);
      const stats = tailStore.stats();
      expect([stats.badRecords, stats.truncatedBytes, stats.replayedRecords]).toEqual([
        1,
        64 + Math.floor(lastRecord.payloadBytes / 2),
        28,
      ]);
      const lost = new Set([middle.key.toString("hex"), lastRecord.key.toString("hex")]);
      const got = await tailStore.getMany(tailKeys);
      expect(summarize(got, tailKeys.map(payload))).toEqual(
        tailKeys.map((key) => (lost.has(key.toString("hex")) ? "KV_NOT_FOUND" : "ok")),
      );
      expect(fs.statSync(last).size).toBe(lastRecord.offset);
      await tailStore.close();
      fs.rmSync(crashed, { recursive: true, force: true });
    } finally {
      fs.rmSync(tailDir, { recursive: true, force: true });
      store = await openStore(dir, OPTIONS);
    }
  });
});
