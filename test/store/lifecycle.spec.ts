import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Worker } from "node:worker_threads";

import { openStore } from "../../src/store";
import type { BlockStore, StoreOptions } from "../../src/store";
import { ADDON_PATH, transpileForChildren } from "./compile";
import { keyOf, payloadFor, summarize, tempDir } from "./helpers";

const OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 1 << 20 };

interface WorkerReport {
  round: number;
  persisted: number;
  verified: number;
}

function runWorker(script: string, job: object, onReport?: (report: WorkerReport, worker: Worker) => void) {
  const reports: WorkerReport[] = [];
  const worker = new Worker(script, {
    workerData: job,
    env: { ...process.env, KVPARK_STORE_ADDON: ADDON_PATH },
  });
  const exited = new Promise<number>((resolve, reject) => {
    worker.on("message", (report: WorkerReport) => {
      reports.push(report);
      onReport?.(report, worker);
    });
    worker.on("error", reject);
    worker.on("exit", resolve);
  });
  return { reports, exited };
}

describe("lifecycle", () => {
  const work = tempDir("lifecycle");
  const { script } = transpileForChildren(path.join(work, "build"));
  let dir: string;
  let store: BlockStore;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(work, "store-"));
    store = await openStore(dir, OPTIONS);
  });

  afterEach(() => store.close());
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  it("serves parallel puts and gets, merging concurrent puts into shared commits", async () => {
    const early = Array.from({ length: 32 }, (_, i) => keyOf(`early-${i}`));
    await store.put(early.map((key) => ({ key, payload: payloadFor(key, 20000) })));
    const batches = Array.from({ length: 8 }, (_, b) =>
      Array.from({ length: 16 }, (_, i) => keyOf(`par-${b}-${i}`)),
    );
    const puts = batches.map((keys) =>
      store.put(keys.map((key) => ({ key, payload: payloadFor(key, 30000) }))),
    );
    const gets = [0, 1, 2, 3].map(() => store.getMany(early));
    const queued = store.stats().queueDepth;
    expect(await Promise.all(puts)).toEqual(batches.map((keys) => keys.map(() => "persisted")));
    for (const got of await Promise.all(gets)) {
      expect(
        summarize(
          got,
          early.map((key) => payloadFor(key, 20000)),
        ),
      ).toEqual(early.map(() => "ok"));
    }
    // The first put went down alone; the other seven waited in the facade's queue.
    expect(queued).toBeGreaterThanOrEqual(7 * 16);
    const all = batches.flat();
    expect(
      summarize(
        await store.getMany(all),
        all.map((key) => payloadFor(key, 30000)),
      ),
    ).toEqual(all.map(() => "ok"));
    expect(store.stats().blocksWritten).toBe(32 + 128);
  });

  it("completes work still pending when close() is called", async () => {
    const keys = Array.from({ length: 64 }, (_, i) => keyOf(`pending-${i}`));
    const puts = [store.put(keys.slice(0, 32).map((key) => ({ key, payload: payloadFor(key, 50000) })))];
    puts.push(store.put(keys.slice(32).map((key) => ({ key, payload: payloadFor(key, 50000) }))));
    const deleted = store.delete(keys[0]);
    const read = store.getMany(keys.slice(0, 8));
    const closing = store.close();
    const late = store.put([{ key: keyOf("late"), payload: Buffer.from("late") }]);
    expect(await Promise.all(puts)).toEqual([
      keys.slice(0, 32).map(() => "persisted"),
      keys.slice(32).map(() => "persisted"),
    ]);
    expect(await deleted).toBe("deleted");
    expect((await read).length).toBe(8);
    expect(await late).toEqual(["KV_CLOSED"]);
    await closing;
    store = await openStore(dir, OPTIONS);
    const got = await store.getMany(keys);
    expect(
      summarize(
        got,
        keys.map((key) => payloadFor(key, 50000)),
      ),
    ).toEqual(["KV_NOT_FOUND", ...keys.slice(1).map(() => "ok")]);
  });

  it("works from a worker thread, and a worker that exits without close() releases the directory", async () => {
    await store.close();
    const closing = runWorker(script("worker-user"), { dir, label: "w1", count: 50, close: true });
    expect(await closing.exited).toBe(0);
    expect(closing.reports).toEqual([{ round: 0, persisted: 50, verified: 50 }]);

    const leaving = runWorker(script("worker-user"), { dir, label: "w2", count: 50, close: false });
    expect(await leaving.exited).toBe(0);
    expect(leaving.reports).toEqual([{ round: 0, persisted: 50, verified: 50 }]);

    store = await openStore(dir, OPTIONS);
    expect(store.stats().blocks).toBe(100);
  });

  it("survives terminating workers in the middle of their writes", async () => {
    await store.close();
    let reported = 0;
    for (const stopRound of [0, 2, 5]) {
      const busy = runWorker(
        script("worker-user"),
        { dir, label: `w3-${stopRound}`, count: 20, close: false, loopForever: true },
        (report, worker) => {
          if (report.round === stopRound) void worker.terminate();
        },
      );
      await busy.exited;
      expect(busy.reports.slice(0, stopRound + 1).map((r) => [r.round, r.persisted, r.verified])).toEqual(
        Array.from({ length: stopRound + 1 }, (_, round) => [round, 20, 20]),
      );
      reported += 20 * busy.reports.length;
    }
    store = await openStore(dir, OPTIONS);
    const keys: Buffer[] = [];
    for await (const key of store.keys()) keys.push(key);
    expect(keys.length).toBeGreaterThanOrEqual(reported);
    const got = await store.getMany(keys);
    expect(
      summarize(
        got,
        keys.map((key) => Buffer.concat([key, key, key])),
      ),
    ).toEqual(keys.map(() => "ok"));
  });

  it("frees read buffers once JavaScript drops them", () => {
    const out = execFileSync(
      process.execPath,
      ["--expose-gc", script("leak-reader"), path.join(work, "leak"), "100"],
      {
        env: { ...process.env, KVPARK_STORE_ADDON: ADDON_PATH },
        encoding: "utf8",
      },
    );
    const { bytesRead, growthBytes } = JSON.parse(out) as { bytesRead: number; growthBytes: number };
    expect(bytesRead).toBe(100 * 8 * (4 << 20));
    // 3.2 GB went through; a leak would keep most of it.
    expect(growthBytes).toBeLessThan(256 << 20);
  });
});
