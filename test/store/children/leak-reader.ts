// Run with --expose-gc: reads many large blocks and drops them, then reports RSS
// growth, so the parent can tell whether payload buffers are freed.
import * as fs from "node:fs";

import { openStore } from "../../../src/store";

const [dir, roundsText] = process.argv.slice(2);

async function main(): Promise<void> {
  const store = await openStore(dir, { bytesMax: 256 << 20, fsync: "none", segmentBytes: 16 << 20 });
  const keys = Array.from({ length: 8 }, (_, i) => Buffer.alloc(32, i + 1));
  await store.put(keys.map((key, i) => ({ key, payload: Buffer.alloc(4 << 20, i) })));
  const gc = (globalThis as { gc?: () => void }).gc as () => void;
  gc();
  const before = process.memoryUsage().rss;
  let bytesRead = 0;
  for (let round = 0; round < Number(roundsText); round++) {
    const got = await store.getMany(keys);
    for (const value of got) bytesRead += Buffer.isBuffer(value) ? value.length : 0;
    if (round % 10 === 0) gc();
  }
  gc();
  await new Promise((resolve) => setTimeout(resolve, 50));
  gc();
  const after = process.memoryUsage().rss;
  await store.close();
  fs.writeSync(1, JSON.stringify({ bytesRead, growthBytes: after - before }) + "\n");
}

void main();
