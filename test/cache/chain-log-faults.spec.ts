/**
 * The chain log is only a cache of what the store holds: whatever happens to it (a flipped bit in
 * any region, a cut at any offset, a torn record in the middle, deletion), a restart loses no
 * stored block. Each case says how many blocks it expects to lose, and asserts exactly that.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { blockKey } from "../../src/cache";
import { ChainLog, type ChainRecord } from "../../src/cache/chain-log";
import type { LoadedModel } from "../../src/model/loader";
import { openCache, removeTempDirs, tempDir, tinyModel } from "./helpers";
import {
  chainLogRegions,
  flipBit,
  persistSequences,
  reopenAndCount,
  rng,
  storedKeys,
  type StoredSequence,
} from "./ssd-fixture";

let model: LoadedModel;
let pristine: string;
let sequences: StoredSequence[];
// 8 prompts x 6 blocks.
const BLOCKS = 48;

beforeAll(async () => {
  model = await tinyModel();
  pristine = tempDir("pristine");
  const cache = await openCache(model, { ssdDir: pristine });
  sequences = await persistSequences(cache, model, 8, 500);
  await cache.close();
  expect((await storedKeys(pristine)).length).toBe(BLOCKS);
});

afterAll(removeTempDirs);

/** A copy of the pristine tier with `damage` done to its chain log. */
function damaged(damage: (log: string) => void): string {
  const dir = tempDir("case");
  fs.cpSync(pristine, dir, { recursive: true });
  damage(path.join(dir, "chain.log"));
  return dir;
}

/**
 * Reopens a damaged tier twice: both opens lose `expected` blocks; the first reads back from the
 * store the blocks the damage hid (`readBack`, when given: the damage cost only those records),
 * and the second finds a log that describes every block again.
 */
async function expectLost(dir: string, expected: number, readBack?: number): Promise<void> {
  const first = await reopenAndCount(model, dir, sequences);
  expect({ lost: first.lost, stored: first.stored }).toEqual({ lost: expected, stored: BLOCKS });
  if (readBack !== undefined) expect(first.stats.ssdIndexReadBack).toBe(readBack);
  const second = await reopenAndCount(model, dir, sequences);
  expect({ lost: second.lost, stored: second.stored }).toEqual({ lost: expected, stored: BLOCKS });
  expect(second.stats).toMatchObject({ ssdIndexSource: "log", ssdIndexReadBack: 0 });
}

describe("chain.log damage at a restart", () => {
  const regions = ["header", "lengths", "bodies", "checksums"] as const;
  for (const region of regions) {
    it(`a flipped bit in the ${region === "header" ? "file header" : `records' ${region}`} loses 0 blocks`, async () => {
      const EXPECTED_LOST = 0;
      const random = rng(1000 + regions.indexOf(region));
      const ranges = chainLogRegions(path.join(pristine, "chain.log"))[region];
      for (let i = 0; i < 3; i++) {
        const [from, to] = ranges[Math.floor(random() * ranges.length)];
        const offset = from + Math.floor(random() * (to - from));
        const bit = Math.floor(random() * 8);
        // A record's damage costs that record only; a header's, every record (or none: flags are not read).
        const readBack = region === "header" ? (offset < 12 ? BLOCKS : 0) : 1;
        await expectLost(
          damaged((log) => flipBit(log, offset, bit)),
          EXPECTED_LOST,
          readBack,
        );
      }
    });
  }

  it("a flipped bit in the first record loses 0 blocks (the tester's case: lookup found nothing)", async () => {
    const EXPECTED_LOST = 0;
    await expectLost(
      damaged((log) => flipBit(log, 16 + 4 + 40, 3)),
      EXPECTED_LOST,
      1,
    );
  });

  it("a cut at random offsets loses 0 blocks", async () => {
    const EXPECTED_LOST = 0;
    const size = fs.statSync(path.join(pristine, "chain.log")).size;
    const random = rng(77);
    for (const offset of [
      0,
      9,
      ...Array.from({ length: 3 }, () => 16 + Math.floor(random() * (size - 16))),
    ]) {
      await expectLost(
        damaged((log) => fs.truncateSync(log, offset)),
        EXPECTED_LOST,
      );
    }
  });

  it("a deleted log loses 0 blocks", async () => {
    const EXPECTED_LOST = 0;
    await expectLost(
      damaged((log) => fs.rmSync(log)),
      EXPECTED_LOST,
      BLOCKS,
    );
  });

  it("a torn record in the middle (an append that failed part-way) loses 0 blocks written after it", async () => {
    const EXPECTED_LOST = 0;
    const dir = damaged(() => {});
    const cache = await openCache(model, { ssdDir: dir });
    // What a write cut short by a full disk leaves: the start of a record.
    fs.appendFileSync(path.join(dir, "chain.log"), Buffer.from([148, 0, 0, 0, 1, 2, 3]));
    const later = await persistSequences(cache, model, 4, 900);
    await cache.close();
    const all = [...sequences, ...later];
    const got = await reopenAndCount(model, dir, all);
    expect({ lost: got.lost, stored: got.stored }).toEqual({ lost: EXPECTED_LOST, stored: BLOCKS + 24 });
  });

  it("a frame forged inside a damaged record's token ids is not taken for a record: 0 blocks lost", async () => {
    const EXPECTED_LOST = 0;
    const dir = damaged(() => {});
    const log = path.join(dir, "chain.log");
    const records = ChainLog.read(log)!.records;
    // Tenant t forges, inside the token ids of a block of its own, the record of a block of tenant u
    // claiming t's root: if a reader resynchronizing after damage took it, t could fetch u's block,
    // and the restore that read it would find it differs from its index entry and delete it.
    const victim = records.find((r) => !r.root.equals(records[0].root))!;
    const forged = frameOf({ ...victim, root: records[0].root, parent: records[0].root });
    const words = new Uint32Array(forged.buffer.slice(forged.byteOffset, forged.byteOffset + forged.length));
    const parent = records[0].root;
    const tokenIds = Uint32Array.from([7, ...words, 9]);
    const container = {
      key: blockKey(parent, tokenIds, model.fingerprint),
      parent,
      root: parent,
      tokenIds,
      storedBytes: 1,
    };
    // Written after the victim's own record, so that it would be the record the index keeps.
    ChainLog.rewrite(log, [...records, container]).close();
    const containerAt = chainLogRegions(log).lengths.at(-1)![0];
    flipBit(log, containerAt, 0); // the container's length: the reader resynchronizes from the next byte on
    const got = await reopenAndCount(model, dir, sequences);
    expect({ lost: got.lost, stored: got.stored }).toEqual({ lost: EXPECTED_LOST, stored: BLOCKS });
    const cache = await openCache(model, { ssdDir: dir });
    const fetched = [];
    for await (const r of cache.getBlocks("t", [victim.key]))
      fetched.push("block" in r ? "block" : r.error.code);
    expect(fetched).toEqual(["NOT_FOUND"]);
    await cache.close();
    expect(await storedKeys(dir)).toContain(victim.key.toString("hex"));
  });
});

/** One framed chain record, as a log holds it. */
function frameOf(record: ChainRecord): Buffer {
  const file = path.join(tempDir("frame"), "one.log");
  ChainLog.rewrite(file, [record]).close();
  return fs.readFileSync(file).subarray(16);
}
