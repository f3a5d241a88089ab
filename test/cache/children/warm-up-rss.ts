/**
 * Child process of warm-up.spec.ts: the RSS a warm-up adds on a cache with an SSD tier, in a fresh
 * process, where pages an allocator reuses from earlier work cannot hide pages never written.
 * Prints { rssGrowthBytes, heldBytes } as JSON.
 */
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache } from "../../../src/cache";
import { ModelCache } from "../../../src/model/model-cache";

const SHAPE = { fingerprint: "d".repeat(64), numLayers: 24, kvHeads: 2, headDim: 64 };
const [ssdDir, stagingDir, restoreBatchBytesMax] = [
  process.argv[2],
  process.argv[3],
  Number(process.argv[4]),
];

async function main(): Promise<void> {
  const cache = await PrefixCache.open(SHAPE, { ssdDir, stagingDir, restoreBatchBytesMax });
  const sequence = () => {
    const s = new ModelCache(SHAPE.numLayers, SHAPE.kvHeads, SHAPE.headDim);
    s.reserve(64);
    return s;
  };
  const from = sequence();
  for (const layer of from.layers) {
    const shape = [1, SHAPE.kvHeads, 24, SHAPE.headDim];
    layer.updateAndFetch(mx.random.normal(shape), mx.random.normal(shape));
  }
  mx.eval(...from.state());
  const rss0 = process.memoryUsage().rss;
  cache.warmUp(from, sequence(), 4096);
  console.log(
    JSON.stringify({ rssGrowthBytes: process.memoryUsage().rss - rss0, heldBytes: cache.heldBytes }),
  );
  await cache.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
