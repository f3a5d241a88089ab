/**
 * Measures a restore from the shared tier on the Qwen2.5-0.5B KV shape (24 layers, 2 KV heads,
 * head_dim 64) against a local redis-server: one cache persists a random sequence and writes its
 * blocks to Redis, a second cache (no SSD) restores it from there, several times, with the stages
 * of each restore, and whether the restored KV equals the source. Not part of the suite; run it
 * under node (with --cpu-prof to profile):
 *
 *   npx tsc -p test/cache/tsconfig.measure.json && node --expose-gc dist/measure/test/cache/measure-shared.js
 *
 * Environment: KVPARK_MEASURE_TOKENS (default 2048), KVPARK_MEASURE_RUNS (default 5).
 */
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache, type CacheOptions, type SharedTierOptions } from "../../src/cache";
import { ModelCache } from "../../src/model/model-cache";
import { RedisServer } from "../../bench/lib/redis";

const SHAPE = { fingerprint: "e".repeat(64), numLayers: 24, kvHeads: 2, headDim: 64 };
const TOKENS = Number(process.env.KVPARK_MEASURE_TOKENS ?? 2048);
const RUNS = Number(process.env.KVPARK_MEASURE_RUNS ?? 5);

function filledSequence(tokens: number): ModelCache {
  const seq = new ModelCache(SHAPE.numLayers, SHAPE.kvHeads, SHAPE.headDim);
  seq.reserve(tokens);
  for (const layer of seq.layers) {
    layer.updateAndFetch(
      mx.random.normal([1, SHAPE.kvHeads, tokens, SHAPE.headDim]),
      mx.random.normal([1, SHAPE.kvHeads, tokens, SHAPE.headDim]),
    );
  }
  mx.eval(...seq.state());
  return seq;
}

function sameKV(a: ModelCache, b: ModelCache, tokens: number): boolean {
  const range = mx.arange(0, tokens, 1, mx.int32);
  return a.layers.every((layer, i) =>
    layer.state().every((buffer, k) => {
      const other = b.layers[i].state()[k];
      return mx.arrayEqual(mx.take(buffer, range, 2), mx.take(other, range, 2)).item() === true;
    }),
  );
}

async function main(): Promise<void> {
  const redis = await RedisServer.start(["--maxmemory", "4gb"]);
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
  try {
    const shared: SharedTierOptions = {
      urls: [redis.url],
      cluster: false,
      timeoutMs: 10_000,
      ttlSeconds: 0,
      admission: "all",
      writeQueueBlocksMax: 4096,
      writeQueueBytesMax: 4 * 1024 ** 3,
      restoreBatchBytesMax: 16 << 20,
      keyPrefix: "m:",
    };
    const options: Partial<CacheOptions> = { blockTokens: 64, ssdDir: null, costModel: false, shared };
    const tokens = Array.from({ length: TOKENS }, (_, i) => (i * 7919) % 150000);
    const writer = await PrefixCache.open(SHAPE, options);
    const source = filledSequence(TOKENS);
    writer.persist("m", tokens, source);
    await writer.flush();
    console.log(JSON.stringify({ written: writer.stats().shared }));
    await writer.close();
    const dataMB = (TOKENS * SHAPE.numLayers * 2 * SHAPE.kvHeads * SHAPE.headDim * 4) / 1e6;
    for (let r = 0; r < RUNS; r++) {
      const reader = await PrefixCache.open(SHAPE, options);
      while (!reader.stats().shared!.connected) await new Promise((resolve) => setTimeout(resolve, 10));
      const match = await reader.lookupShared("m", tokens, { tokensMax: TOKENS });
      const seq = new ModelCache(SHAPE.numLayers, SHAPE.kvHeads, SHAPE.headDim);
      seq.reserve(TOKENS);
      const report = await reader.restore(match, seq);
      console.log(
        JSON.stringify({
          tokens: report.sharedTokens,
          ms: Math.round(report.restoreMs),
          MBps: Math.round(dataMB / (report.restoreMs / 1000)),
          stages: Object.fromEntries(Object.entries(report.stages).map(([k, v]) => [k, Math.round(v)])),
          rate: Math.round(reader.stats().rates.sharedRestoreBytesPerSecond / 1e6),
          ok: sameKV(source, seq, TOKENS),
        }),
      );
      await reader.close();
      gc();
    }
  } finally {
    await redis.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
