// Runs the store inside a worker thread. workerData: { dir, label, count, close }.
// With close=false the worker ends with the store still open, and the parent
// checks that tearing down the worker released the directory.
import * as crypto from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";

import { openStore } from "../../../src/store";

interface Job {
  dir: string;
  label: string;
  count: number;
  close: boolean;
  loopForever?: boolean;
}

function keyOf(label: string): Buffer {
  return crypto.createHash("sha256").update(label).digest();
}

async function main(job: Job): Promise<void> {
  const store = await openStore(job.dir, { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 1 << 20 });
  let round = 0;
  do {
    const keys = Array.from({ length: job.count }, (_, i) => keyOf(`${job.label}-${round}-${i}`));
    const results = await store.put(keys.map((key) => ({ key, payload: Buffer.concat([key, key, key]) })));
    const got = await store.getMany(keys);
    const verified = got.filter(
      (value, i) => Buffer.isBuffer(value) && value.equals(Buffer.concat([keys[i], keys[i], keys[i]])),
    ).length;
    parentPort?.postMessage({ round, persisted: results.filter((r) => r === "persisted").length, verified });
    round += 1;
  } while (job.loopForever);
  if (job.close) await store.close();
}

void main(workerData as Job);
