import * as fs from "node:fs";
import * as path from "node:path";

import { openStore, storeFormatVersion } from "../../src/store";
import type { BlockStore, StoreOptions } from "../../src/store";
import { flipBit, keyOf, payloadFor, resealIndex, resealSegmentHeader, summarize, tempDir } from "./helpers";

// Golden stores written by each format version this build must keep reading.
// Regenerate the current version's files with UPDATE_GOLDEN=1 only when the
// format version changes; older versions' directories are never rewritten.
const GOLDEN_V1 = path.join(__dirname, "golden", "v1");
const GOLDEN_FILES = ["seg-00000001.kvs", "INDEX"];
const OPTIONS: StoreOptions = { bytesMax: 1 << 20, fsync: "batch", segmentBytes: 64 << 10 };

const keys = [0, 1, 2, 3].map((i) => keyOf(`golden-${i}`));
const expected = {
  zero: Buffer.alloc(0),
  replaced: payloadFor(keyOf("golden-2-v2"), 2500),
  last: payloadFor(keys[3], 20),
};

/** The fixed history both golden files record. */
async function writeGoldenHistory(store: BlockStore): Promise<void> {
  expect(
    await store.put([
      { key: keys[0], payload: expected.zero },
      { key: keys[1], payload: payloadFor(keys[1], 100) },
      { key: keys[2], payload: payloadFor(keys[2], 3000) },
      { key: keys[3], payload: expected.last },
    ]),
  ).toEqual(["persisted", "persisted", "persisted", "persisted"]);
  expect(await store.delete(keys[1])).toBe("deleted");
  expect(await store.put([{ key: keys[2], payload: expected.replaced }])).toEqual(["persisted"]);
  await store.getMany([keys[0]]);
  expect(store.pin(keys[0], "hard")).toBe("pinned");
}

function copyGolden(): string {
  const dir = tempDir("golden");
  for (const name of GOLDEN_FILES) fs.copyFileSync(path.join(GOLDEN_V1, name), path.join(dir, name));
  return dir;
}

function patch(file: string, offset: number, bytes: number[]): void {
  const data = fs.readFileSync(file);
  Buffer.from(bytes).copy(data, offset);
  fs.writeFileSync(file, data);
}

describe("on-disk format", () => {
  it("writes version 1 byte for byte as the golden files record it", async () => {
    expect(storeFormatVersion()).toBe(1);
    const dir = tempDir("golden-write");
    const store = await openStore(dir, OPTIONS);
    await writeGoldenHistory(store);
    await store.close();
    if (process.env.UPDATE_GOLDEN === "1") {
      fs.mkdirSync(GOLDEN_V1, { recursive: true });
      for (const name of GOLDEN_FILES) fs.copyFileSync(path.join(dir, name), path.join(GOLDEN_V1, name));
    }
    expect(fs.readdirSync(dir).sort()).toEqual(["INDEX", "LOCK", "seg-00000001.kvs"]);
    for (const name of GOLDEN_FILES) {
      expect([
        name,
        fs.readFileSync(path.join(dir, name)).equals(fs.readFileSync(path.join(GOLDEN_V1, name))),
      ]).toEqual([name, true]);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("reads a version 1 store", async () => {
    const dir = copyGolden();
    const store = await openStore(dir, OPTIONS);
    const got = await store.getMany(keys);
    expect(summarize(got, [expected.zero, expected.zero, expected.replaced, expected.last])).toEqual([
      "ok",
      "KV_NOT_FOUND",
      "ok",
      "ok",
    ]);
    const stats = store.stats();
    expect([stats.blocks, stats.pinnedBlocks, stats.replayedRecords, stats.badRecords]).toEqual([3, 1, 0, 0]);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it.each([
    ["segment", "seg-00000001.kvs", resealSegmentHeader],
    ["index", "INDEX", resealIndex],
  ])(
    "refuses a %s that needs a newer reader with KV_FORMAT and leaves it untouched",
    async (_label, name, reseal) => {
      const dir = copyGolden();
      const file = path.join(dir, name);
      // A genuinely newer file: valid magic, readVersionMin = 2, and a checksum that verifies.
      patch(file, 10, [2, 0]);
      reseal(file);
      const before = fs.readFileSync(file);
      await expect(openStore(dir, OPTIONS)).rejects.toMatchObject({
        name: "StoreError",
        code: "KV_FORMAT",
        message: expect.stringContaining("needs format reader version 2; this build reads version 1"),
      });
      expect(fs.readFileSync(file).equals(before)).toBe(true);
      expect(fs.readdirSync(dir).sort()).toEqual(["INDEX", "LOCK", "seg-00000001.kvs"]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  );

  it("treats a version field with a bad header checksum as damage, not as a newer format", async () => {
    // Segment: quarantined, its 3 blocks absent, the store opens.
    let dir = copyGolden();
    patch(path.join(dir, "seg-00000001.kvs"), 10, [2, 0]);
    let store = await openStore(dir, OPTIONS);
    expect(
      summarize(
        await store.getMany(keys),
        keys.map(() => expected.zero),
      ),
    ).toEqual(["KV_NOT_FOUND", "KV_NOT_FOUND", "KV_NOT_FOUND", "KV_NOT_FOUND"]);
    expect(store.stats().quarantinedSegments).toBe(1);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });

    // INDEX: ignored and rebuilt from the segment; all 3 blocks found.
    dir = copyGolden();
    flipBit(path.join(dir, "INDEX"), 10, 1);
    store = await openStore(dir, OPTIONS);
    expect(
      summarize(await store.getMany(keys), [expected.zero, expected.zero, expected.replaced, expected.last]),
    ).toEqual(["ok", "KV_NOT_FOUND", "ok", "ok"]);
    expect(store.stats().indexRebuilds).toBe(1);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it.each([
    ["a flipped bit in its magic", (file: string) => flipBit(file, 3, 5)],
    ["another program's magic", (file: string) => patch(file, 0, [...Buffer.from("NOTKVPK")])],
    ["a flipped bit in its checksum", (file: string) => flipBit(file, 60, 0)],
  ])("quarantines a segment with %s, reports it, and opens without its blocks", async (_label, damage) => {
    const dir = copyGolden();
    const segment = path.join(dir, "seg-00000001.kvs");
    damage(segment);
    const damaged = fs.readFileSync(segment);
    const store = await openStore(dir, OPTIONS);
    expect(await store.getMany(keys)).toEqual(keys.map(() => "KV_NOT_FOUND"));
    const stats = store.stats();
    expect([stats.blocks, stats.quarantinedSegments, stats.quarantinedFiles]).toEqual([
      0,
      1,
      ["seg-00000001.kvs.quarantined"],
    ]);
    expect(stats.openWarnings).toEqual([
      expect.stringMatching(/seg-00000001\.kvs.*renamed to seg-00000001\.kvs\.quarantined/),
    ]);
    // Renamed aside byte for byte, never deleted; the store keeps working.
    expect(fs.readFileSync(`${segment}.quarantined`).equals(damaged)).toBe(true);
    expect(await store.put([{ key: keys[3], payload: expected.last }])).toEqual(["persisted"]);
    await store.close();
    const reopened = await openStore(dir, OPTIONS);
    expect(reopened.stats().quarantinedSegments).toBe(1);
    expect(summarize(await reopened.getMany([keys[3]]), [expected.last])).toEqual(["ok"]);
    await reopened.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
