/**
 * Child process of pins-restart.spec.ts: persists one sequence to an SSD tier (fsync per batch),
 * hard-pins its blocks, prints {"pinned": n} and waits to be killed with SIGKILL, so that the store
 * never writes a checkpoint after the pin.
 */
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache } from "../../../src/cache";
import { ModelCache } from "../../../src/model/model-cache";

export const PIN_SHAPE = { fingerprint: "e".repeat(64), numLayers: 2, kvHeads: 2, headDim: 16 };
export const PIN_TOKENS = 40;
export const PIN_TENANT = "pinner";

async function main(): Promise<void> {
  const [ssdDir, stagingDir] = process.argv.slice(2);
  const cache = await PrefixCache.open(PIN_SHAPE, {
    blockTokens: 8,
    ssdDir,
    stagingDir,
    ssdSegmentBytes: 1024 * 1024,
    ssdBytesMax: 256 * 1024 * 1024,
  });
  const sequence = new ModelCache(PIN_SHAPE.numLayers, PIN_SHAPE.kvHeads, PIN_SHAPE.headDim);
  const shape = [1, PIN_SHAPE.kvHeads, PIN_TOKENS, PIN_SHAPE.headDim];
  for (const layer of sequence.layers) layer.updateAndFetch(mx.full(shape, 3), mx.full(shape, -3));
  mx.eval(...sequence.state());
  const tokens = Array.from({ length: PIN_TOKENS }, (_, k) => 5 + k);
  cache.persist(PIN_TENANT, tokens, sequence);
  await cache.flush();
  const report = cache.pin(PIN_TENANT, { tokens }, { kind: "hard" });
  console.log(JSON.stringify({ pinned: report.pinnedBlocks }));
  setInterval(() => {}, 1000);
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
