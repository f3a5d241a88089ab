import * as fs from "node:fs";
import * as path from "node:path";

import { openStore } from "../../src/store";
import type { StoreOptions } from "../../src/store";
import { keyOf, payloadFor, summarize, tempDir } from "./helpers";

const BLOCKS = 100_000;
const PAYLOAD_BYTES = 256;
// No checkpoint happens while writing (the interval exceeds the data), so a copy
// taken before close() is what a kill -9 leaves: everything is tail to replay.
const OPTIONS: StoreOptions = { bytesMax: 1 << 30, fsync: "none", checkpointEveryBytes: 1 << 29 };

// How long these opens take is measured by the benchmark (bench/sections/reopen.ts), not here.
describe(`reopen with ${BLOCKS} blocks`, () => {
  const dir = tempDir("reopen");
  const crashed = tempDir("reopen-crashed");
  const keys = Array.from({ length: BLOCKS }, (_, i) => keyOf(`reopen-${i}`));
  const sample = keys.filter((_, i) => i % 997 === 0);

  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(crashed, { recursive: true, force: true });
  });

  it("replays a crashed store's log, and opens a cleanly closed one from its index alone", async () => {
    let store = await openStore(dir, OPTIONS);
    for (let i = 0; i < BLOCKS; i += 5000) {
      const batch = keys.slice(i, i + 5000).map((key) => ({ key, payload: payloadFor(key, PAYLOAD_BYTES) }));
      await store.put(batch);
    }
    for (const name of fs.readdirSync(dir)) fs.copyFileSync(path.join(dir, name), path.join(crashed, name));
    await store.close();

    const fromLog = await openStore(crashed, OPTIONS);
    const logStats = fromLog.stats();
    expect([logStats.blocks, logStats.replayedRecords, logStats.badRecords]).toEqual([BLOCKS, BLOCKS, 0]);
    expect(
      summarize(
        await fromLog.getMany(sample),
        sample.map((k) => payloadFor(k, PAYLOAD_BYTES)),
      ),
    ).toEqual(sample.map(() => "ok"));
    await fromLog.close();

    store = await openStore(dir, OPTIONS);
    const stats = store.stats();
    // Nothing replayed: the index alone rebuilt 100k entries, no payload was read.
    expect([stats.blocks, stats.replayedRecords, stats.badRecords]).toEqual([BLOCKS, 0, 0]);
    expect(
      summarize(
        await store.getMany(sample),
        sample.map((k) => payloadFor(k, PAYLOAD_BYTES)),
      ),
    ).toEqual(sample.map(() => "ok"));
    await store.close();
  });
});
