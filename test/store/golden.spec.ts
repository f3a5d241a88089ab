import * as fs from "node:fs";
import * as path from "node:path";

import { openStore, storeFormatVersion } from "../../src/store";
import type { BlockStore, StoreOptions } from "../../src/store";
import { keyOf, payloadFor, summarize, tempDir } from "./helpers";

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
    ["segment", "seg-00000001.kvs"],
    ["index", "INDEX"],
  ])(
    "refuses a %s that needs a newer reader with KV_FORMAT and leaves it untouched",
    async (_label, name) => {
      const dir = copyGolden();
      const file = path.join(dir, name);
      patch(file, 10, [2, 0]); // readVersionMin = 2
      const before = fs.readFileSync(file);
      await expect(openStore(dir, OPTIONS)).rejects.toMatchObject({
        name: "StoreError",
        code: "KV_FORMAT",
        message: expect.stringContaining("needs format reader version 2; this build reads version 1"),
      });
      expect(fs.readFileSync(file).equals(before)).toBe(true);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  );

  it("refuses a segment file that is not a kvpark segment", async () => {
    const dir = copyGolden();
    patch(path.join(dir, "seg-00000001.kvs"), 0, [...Buffer.from("NOTKVPK")]);
    await expect(openStore(dir, OPTIONS)).rejects.toMatchObject({ code: "KV_FORMAT" });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
