import * as fs from "node:fs";
import * as path from "node:path";

import { openStore } from "../../src/store";
import type { StoreOptions } from "../../src/store";
import {
  copyDir,
  flipBit,
  keyOf,
  parseSegment,
  segmentFiles,
  sizedPayloadFor,
  summarize,
  tempDir,
} from "./helpers";

// One segment holds everything, so damage in it has intact records on both sides.
const OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 4 << 20 };
const payload = (key: Buffer) => sizedPayloadFor(key, 0, 6000);

describe("replay resynchronizes past damage instead of truncating", () => {
  const work = tempDir("recovery");
  const pristine = path.join(work, "pristine");
  const keys = Array.from({ length: 30 }, (_, i) => keyOf(`resync-${i}`));
  let cases = 0;

  beforeAll(async () => {
    const store = await openStore(pristine, OPTIONS);
    for (let i = 0; i < keys.length; i += 5) {
      await store.put(keys.slice(i, i + 5).map((key) => ({ key, payload: payload(key) })));
    }
    await store.close();
    expect(segmentFiles(pristine).length).toBe(1);
  });

  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  /** A copy of the store without its INDEX, damaged by `damage`; returns the copy. */
  function damagedCopy(damage: (segment: string) => void): string {
    const dir = path.join(work, `case-${cases++}`);
    copyDir(pristine, dir);
    fs.rmSync(path.join(dir, "INDEX"));
    damage(segmentFiles(dir)[0]);
    return dir;
  }

  async function expectOnlyLost(dir: string, lost: number[]): Promise<void> {
    const store = await openStore(dir, OPTIONS);
    const got = await store.getMany(keys);
    expect(summarize(got, keys.map(payload))).toEqual(
      keys.map((_, i) => (lost.includes(i) ? "KV_NOT_FOUND" : "ok")),
    );
    await store.close();
  }

  // Header fields of record 7 (FORMAT.md "Record"): each flip loses that record only.
  it.each([
    ["magic", 0],
    ["kind", 4],
    ["reserved0", 6],
    ["payloadBytes (low byte)", 8],
    ["payloadBytes (high byte)", 11],
    ["reserved1", 12],
    ["seqNo", 16],
    ["key", 30],
    ["checksum", 60],
  ])(
    "a flipped bit in a record's %s with no INDEX loses 1 block, not the rest of the segment",
    async (_f, at) => {
      const records = parseSegment(segmentFiles(pristine)[0]);
      const victim = records[7];
      const size = fs.statSync(victim.file).size;
      const dir = damagedCopy((segment) => flipBit(segment, victim.offset + at, 2));
      await expectOnlyLost(dir, [7]);
      // Nothing was cut: the damaged bytes stay, the records after them are replayed.
      expect(fs.statSync(segmentFiles(dir)[0]).size).toBe(size);
      const store = await openStore(dir, OPTIONS);
      expect(store.stats().blocks).toBe(29);
      await store.close();
    },
  );

  it("a torn record in the middle (header written, payload zeroed) loses 1 block", async () => {
    const records = parseSegment(segmentFiles(pristine)[0]);
    const victim = records.find((r, i) => i > 3 && r.payloadBytes > 1000)!;
    const index = records.indexOf(victim);
    const dir = damagedCopy((segment) => {
      const fd = fs.openSync(segment, "r+");
      fs.writeSync(
        fd,
        Buffer.alloc(victim.payloadBytes - 500),
        0,
        victim.payloadBytes - 500,
        victim.offset + 64 + 500,
      );
      fs.closeSync(fd);
    });
    const store = await openStore(dir, OPTIONS);
    const stats = store.stats();
    expect([stats.blocks, stats.badRecords, stats.truncatedBytes]).toEqual([29, 1, 0]);
    await store.close();
    await expectOnlyLost(dir, [index]);
  });

  it("a zeroed record header in the middle loses 1 block", async () => {
    const records = parseSegment(segmentFiles(pristine)[0]);
    const dir = damagedCopy((segment) => {
      const fd = fs.openSync(segment, "r+");
      fs.writeSync(fd, Buffer.alloc(64), 0, 64, records[12].offset);
      fs.closeSync(fd);
    });
    await expectOnlyLost(dir, [12]);
  });

  it("two damaged records back to back lose 2 blocks", async () => {
    const records = parseSegment(segmentFiles(pristine)[0]);
    const dir = damagedCopy((segment) => {
      flipBit(segment, records[20].offset + 9, 6); // a length that points into the next record
      flipBit(segment, records[21].offset + 64 + Math.floor(records[21].payloadBytes / 2), 0);
    });
    if (records[21].payloadBytes === 0) throw new Error("test data: record 21 needs a payload");
    await expectOnlyLost(dir, [20, 21]);
  });

  it("only a torn tail of the last segment is cut", async () => {
    const records = parseSegment(segmentFiles(pristine)[0]);
    const last = records[records.length - 1];
    const dir = damagedCopy((segment) => fs.truncateSync(segment, last.offset + 64 + 3));
    const store = await openStore(dir, OPTIONS);
    expect(store.stats().truncatedBytes).toBe(64 + 3);
    await store.close();
    expect(fs.statSync(segmentFiles(dir)[0]).size).toBe(last.offset);
    await expectOnlyLost(dir, [records.length - 1]);
  });

  it("a damaged tail of an older segment is skipped, not cut", async () => {
    const dir = damagedCopy((segment) => {
      const records = parseSegment(segment);
      const last = records[records.length - 1];
      fs.truncateSync(segment, last.offset + 64 + 3);
    });
    // A later segment makes the damaged one an older one.
    let store = await openStore(dir, OPTIONS);
    const later = keyOf("resync-later");
    expect(await store.put([{ key: later, payload: payload(later) }])).toEqual(["persisted"]);
    await store.close();
    fs.rmSync(path.join(dir, "INDEX"));
    const [older] = segmentFiles(dir);
    const size = fs.statSync(older).size;
    store = await openStore(dir, OPTIONS);
    expect(store.stats().truncatedBytes).toBe(0);
    expect(summarize(await store.getMany([later]), [payload(later)])).toEqual(["ok"]);
    await store.close();
    expect(fs.statSync(older).size).toBe(size);
  });
});

describe("the INDEX checkpoint is all or nothing", () => {
  const work = tempDir("index-faults");
  const crashed = path.join(work, "crashed");
  const before = Array.from({ length: 40 }, (_, i) => keyOf(`index-before-${i}`));
  const after = Array.from({ length: 20 }, (_, i) => keyOf(`index-after-${i}`));
  const overwritten = before[3];
  const deleted = before[4];
  const live = [...before, ...after].filter((key) => key !== deleted);
  const expected = (key: Buffer) => (key === overwritten ? payload(keyOf("index-overwrite")) : payload(key));
  let cases = 0;

  beforeAll(async () => {
    // A checkpoint covering `before`, then a tail (overwrite, delete, more blocks) it does not cover:
    // the copy taken before close() is what a kill -9 leaves.
    const dir = path.join(work, "live");
    let store = await openStore(dir, { ...OPTIONS, segmentBytes: 64 << 10 });
    await store.put(before.map((key) => ({ key, payload: payload(key) })));
    await store.close();
    store = await openStore(dir, { ...OPTIONS, segmentBytes: 64 << 10 });
    await store.put([{ key: overwritten, payload: expected(overwritten) }]);
    expect(await store.delete(deleted)).toBe("deleted");
    await store.put(after.map((key) => ({ key, payload: payload(key) })));
    copyDir(dir, crashed);
    await store.close();
    expect(segmentFiles(crashed).length).toBeGreaterThan(2);
  });

  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  async function expectAllFound(damage: (index: string) => void, rebuilt: number): Promise<void> {
    const dir = path.join(work, `case-${cases++}`);
    copyDir(crashed, dir);
    damage(path.join(dir, "INDEX"));
    const store = await openStore(dir, { ...OPTIONS, segmentBytes: 64 << 10 });
    expect(summarize(await store.getMany(live), live.map(expected))).toEqual(live.map(() => "ok"));
    expect(await store.getMany([deleted])).toEqual(["KV_NOT_FOUND"]);
    const stats = store.stats();
    expect([stats.blocks, stats.indexRebuilds, stats.badRecords, stats.truncatedBytes]).toEqual([
      live.length,
      rebuilt,
      0,
      0,
    ]);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }

  it("the undamaged crash image finds every block", () => expectAllFound(() => undefined, 0));

  // Every header field (FORMAT.md "Index header") and every part of an entry.
  it.each([
    0, 7, 8, 10, 11, 12, 16, 23, 24, 28, 32, 40, 48, 56, 60, 71, 72, 79, 80, 111, 112, 116, 120, 128, 136,
    144, 152, 156, -1,
  ])("a flipped bit at INDEX byte %i is ignored: the index is rebuilt, all blocks found", (at) =>
    expectAllFound((index) => flipBit(index, at >= 0 ? at : fs.statSync(index).size + at, 4), 1),
  );

  it.each([0, 1, 40, 79, 80, 100, 160, -80, -1])(
    "an INDEX truncated to %i bytes (negative: from the end) is ignored: all blocks found",
    (size) =>
      expectAllFound((index) => fs.truncateSync(index, size >= 0 ? size : fs.statSync(index).size + size), 1),
  );

  it("a deleted INDEX is rebuilt from the segments: all blocks found", () =>
    expectAllFound((index) => fs.rmSync(index), 1));
});
