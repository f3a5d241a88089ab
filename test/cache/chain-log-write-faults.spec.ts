/**
 * A full disk or a failing device under chain.log fails only the writes it hits: blocks are still
 * stored and found, the log keeps ending in whole records, writes succeed again once space is
 * back, and a restart loses nothing written before, during or after. Each case says how many
 * blocks it expects to lose, and asserts exactly that.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { PrefixCache } from "../../src/cache";
import { ChainLog } from "../../src/cache/chain-log";
import type { LoadedModel } from "../../src/model/loader";
import { faultyIo } from "./faulty-io";
import { openCache, removeTempDirs, tempDir, tinyModel } from "./helpers";
import { persistSequences, reopenAndCount, type StoredSequence } from "./ssd-fixture";

let model: LoadedModel;

beforeAll(async () => {
  model = await tinyModel();
});

afterAll(removeTempDirs);

/** Every block of every sequence is found by lookup right now. */
function expectAllFound(cache: PrefixCache, sequences: readonly StoredSequence[]): void {
  expect(sequences.map((s) => cache.lookup(s.tenant, s.tokens).tokens)).toEqual(
    sequences.map((s) => s.tokens.length),
  );
}

/** Restarts the tier, asserting that it loses exactly `expected` of the blocks of `all` (6 each). */
async function expectRestartLoses(ssdDir: string, all: readonly StoredSequence[], expected: number) {
  const restart = await reopenAndCount(model, ssdDir, all);
  expect({ lost: restart.lost, stored: restart.stored }).toEqual({ lost: expected, stored: 6 * all.length });
  return restart;
}

/** The keys of the sequences' blocks the log names, read as a restart would, and its damage. */
function logState(ssdDir: string) {
  const read = ChainLog.read(path.join(ssdDir, "chain.log"))!;
  return {
    records: new Set(read.records.map((r) => r.key.toString("hex"))).size,
    damagedRanges: read.damagedRanges,
    tornBytes: read.tornBytes,
  };
}

describe("chain.log on a full or failing disk", () => {
  it("ENOSPC in the middle of an append, then space back, then more writes, then a restart: 0 blocks lost", async () => {
    const EXPECTED_LOST = 0;
    const ssdDir = tempDir("ssd");
    const { io, fault, failures } = faultyIo();
    const clock = { ms: 1_000_000 };
    const lines: string[] = [];
    const cache = await openCache(
      model,
      { ssdDir },
      { fileIo: io, log: (l) => lines.push(l), nowMs: () => clock.ms },
    );
    const before = await persistSequences(cache, model, 4, 100);

    // The disk fills up in the middle of the next append: 60 bytes of it go down, then ENOSPC.
    Object.assign(fault, { code: "ENOSPC", partialBytes: 60 });
    const during = await persistSequences(cache, model, 4, 200);
    expect(failures[0]).toBe("write ENOSPC");
    // The blocks were stored all the same, and are found.
    expectAllFound(cache, [...before, ...during]);
    const full = cache.stats();
    // One failed append per write batch, one batch per sequence.
    expect(full).toMatchObject({
      writeErrors: 4,
      writeErrorsEnospc: 4,
      writeErrorsEio: 0,
      writeErrorsOther: 0,
    });
    expect(full.ssd.blocks).toBe(48);
    // One log line for all of them: at most one per cause per minute.
    expect(lines.filter((l) => l.includes("ENOSPC"))).toEqual([
      expect.stringMatching(/^kvpark: cache: SSD write failed \(ENOSPC\): chain\.log append: ENOSPC/),
    ]);
    // The log never holds a torn record: the failed append was cut back to its last whole record.
    expect(logState(ssdDir)).toMatchObject({ damagedRanges: 0, tornBytes: 0 });

    // A minute later, still full: a second line, which counts what the first left unsaid.
    clock.ms += 61_000;
    const stillFull = await persistSequences(cache, model, 2, 300);
    const enospcLines = lines.filter((l) => l.includes("ENOSPC"));
    expect(enospcLines.length).toBe(2);
    expect(enospcLines[1]).toMatch(/\(3 more ENOSPC failures since the last line\)$/);
    expect(cache.stats()).toMatchObject({ writeErrors: 6, writeErrorsEnospc: 6 });

    // Space comes back: the next writes succeed, and the records the full disk refused go with them.
    fault.code = null;
    const after = await persistSequences(cache, model, 4, 400);
    const all = [...before, ...during, ...stillFull, ...after];
    expectAllFound(cache, all);
    expect(logState(ssdDir)).toEqual({ records: 6 * all.length, damagedRanges: 0, tornBytes: 0 });
    await cache.close();

    const restart = await expectRestartLoses(ssdDir, all, EXPECTED_LOST);
    // The log described every block: nothing had to be read back from the store.
    expect(restart.stats).toMatchObject({ ssdIndexSource: "log", ssdIndexReadBack: 0 });
  });

  it("EIO on writes, on the cut back and on fdatasync, then a healthy device, then a restart: 0 blocks lost", async () => {
    const EXPECTED_LOST = 0;
    const ssdDir = tempDir("ssd");
    const { io, fault, failures } = faultyIo();
    const cache = await openCache(model, { ssdDir, ssdFsync: "batch" }, { fileIo: io });
    const before = await persistSequences(cache, model, 3, 500);
    Object.assign(fault, { code: "EIO", partialBytes: 100, ops: new Set(["write", "truncate", "sync"]) });
    const during = await persistSequences(cache, model, 3, 600);
    expect(failures).toEqual(expect.arrayContaining(["write EIO", "truncate EIO", "sync EIO"]));
    expectAllFound(cache, [...before, ...during]);
    const failing = cache.stats();
    expect(failing.writeErrorsEio).toBeGreaterThanOrEqual(2);
    expect(failing).toMatchObject({ writeErrors: failing.writeErrorsEio, writeErrorsEnospc: 0 });
    fault.code = null;
    const after = await persistSequences(cache, model, 3, 700);
    const all = [...before, ...during, ...after];
    expectAllFound(cache, all);
    await cache.close();

    await expectRestartLoses(ssdDir, all, EXPECTED_LOST);
  });

  it("an open on a full disk that cannot rewrite a missing log serves every block, and a later restart loses 0", async () => {
    const EXPECTED_LOST = 0;
    const ssdDir = tempDir("ssd");
    let cache = await openCache(model, { ssdDir });
    const before = await persistSequences(cache, model, 3, 800);
    await cache.close();
    fs.rmSync(path.join(ssdDir, "chain.log"));

    const { io, fault } = faultyIo();
    const clock = { ms: 1_000_000 };
    Object.assign(fault, { code: "ENOSPC", partialBytes: 0 });
    cache = await openCache(model, { ssdDir }, { fileIo: io, nowMs: () => clock.ms });
    expect(cache.stats()).toMatchObject({
      ssdIndexSource: "scan",
      ssdIndexReadBack: 18,
      writeErrorsEnospc: 1,
    });
    expect(fs.existsSync(path.join(ssdDir, "chain.log"))).toBe(false);
    expect(fs.existsSync(path.join(ssdDir, "chain.log.tmp"))).toBe(false);
    expectAllFound(cache, before);
    const during = await persistSequences(cache, model, 2, 900);
    // Space back; the log is written again at the first write after a minute.
    fault.code = null;
    clock.ms += 61_000;
    const after = await persistSequences(cache, model, 2, 1000);
    const all = [...before, ...during, ...after];
    expectAllFound(cache, all);
    await cache.close();

    const restart = await expectRestartLoses(ssdDir, all, EXPECTED_LOST);
    expect(restart.stats).toMatchObject({ ssdIndexSource: "log", ssdIndexReadBack: 0 });
  });
});
