/**
 * Child process of ram-budget.spec.ts (run with --expose-gc): persists a stream of sequences of the
 * Qwen2.5-0.5B KV shape into a RAM tier smaller than them, collecting between requests as the
 * engine does, and prints the RSS growth after each one as JSON lines.
 */
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache } from "../../../src/cache";
import { ModelCache } from "../../../src/model/model-cache";

const SHAPE = { fingerprint: "c".repeat(64), numLayers: 24, kvHeads: 2, headDim: 64 };
const [ramBytesMax, tokens, requests, stagingDir] = [
  Number(process.argv[2]),
  Number(process.argv[3]),
  Number(process.argv[4]),
  process.argv[5],
];

async function main(): Promise<void> {
  const cache = await PrefixCache.open(SHAPE, { ramBytesMax, gcFreedBytesThreshold: 0, stagingDir });
  const gc = (globalThis as { gc?: () => void }).gc!;
  gc();
  const rss0 = process.memoryUsage().rss;
  for (let i = 0; i < requests; i++) {
    const sequence = new ModelCache(SHAPE.numLayers, SHAPE.kvHeads, SHAPE.headDim);
    sequence.reserve(tokens);
    for (const layer of sequence.layers) {
      const shape = [1, SHAPE.kvHeads, tokens, SHAPE.headDim];
      layer.updateAndFetch(mx.random.normal(shape), mx.random.normal(shape));
    }
    mx.eval(...sequence.state());
    const ids = Array.from({ length: tokens }, (_, k) => i * 1_000_000 + k);
    cache.persist("m", ids, sequence);
    // Between requests: collect, then return to the event loop, where the finalizers that free
    // MLX memory run.
    gc();
    cache.collectIfNeeded();
    await new Promise((resolve) => setImmediate(resolve));
    const stats = cache.stats().ram;
    console.log(JSON.stringify({ rssGrowthBytes: process.memoryUsage().rss - rss0, ramBytes: stats.bytes }));
  }
  await cache.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
