/**
 * Child process of crash.spec.ts: persists sequence after sequence to an SSD tier (fsync per
 * batch) and prints {"done": i} once sequence i is durable, until it is killed. Sequence i holds
 * tokens i * 1000 + k and KV equal to i everywhere, so a reader can check what survived.
 */
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache } from "../../../src/cache";
import { ModelCache } from "../../../src/model/model-cache";

export const CRASH_SHAPE = { fingerprint: "d".repeat(64), numLayers: 2, kvHeads: 2, headDim: 16 };
export const CRASH_TOKENS = 40;

async function main(): Promise<void> {
  const [ssdDir, stagingDir] = process.argv.slice(2);
  const cache = await PrefixCache.open(CRASH_SHAPE, {
    blockTokens: 8,
    ssdDir,
    stagingDir,
    ssdSegmentBytes: 1024 * 1024,
    ssdBytesMax: 256 * 1024 * 1024,
  });
  for (let i = 0; ; i++) {
    const sequence = new ModelCache(CRASH_SHAPE.numLayers, CRASH_SHAPE.kvHeads, CRASH_SHAPE.headDim);
    const shape = [1, CRASH_SHAPE.kvHeads, CRASH_TOKENS, CRASH_SHAPE.headDim];
    for (const layer of sequence.layers) layer.updateAndFetch(mx.full(shape, i), mx.full(shape, -i));
    mx.eval(...sequence.state());
    const tokens = Array.from({ length: CRASH_TOKENS }, (_, k) => i * 1000 + k);
    cache.persist("crash", tokens, sequence);
    await cache.flush();
    console.log(JSON.stringify({ done: i }));
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
