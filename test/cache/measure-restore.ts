/**
 * Measures the cache's stages on the Qwen2.5-0.5B KV shape (24 layers, 2 KV heads, head_dim 64)
 * for several block sizes: persist (export into RAM), SSD write, lookup, restore from RAM, from
 * SSD with the page cache warm and, when run as root, dropped. Not part of the suite (jest's
 * sandbox slows plain JS such as header parsing about threefold); run it under node:
 *
 *   npx tsc -p test/cache/tsconfig.measure.json && node --expose-gc dist/measure/test/cache/measure-restore.js
 *
 * Environment: KVPARK_MEASURE_TOKENS (default 8192), KVPARK_MEASURE_BLOCKS (default 16,32,64,128).
 * Prints one JSON line per block size; src/cache/README.md records a run.
 */
import { execSync } from "node:child_process";
import { PerformanceObserver } from "node:perf_hooks";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache, type CacheOptions } from "../../src/cache";
import { ModelCache } from "../../src/model/model-cache";

const SHAPE = { fingerprint: "e".repeat(64), numLayers: 24, kvHeads: 2, headDim: 64 };
const TOKENS = Number(process.env.KVPARK_MEASURE_TOKENS ?? 8192);
const BLOCKS = (process.env.KVPARK_MEASURE_BLOCKS ?? "16,32,64,128").split(",").map(Number);
const MB = 1e6;

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

function dropPageCache(): boolean {
  if (os.userInfo().uid !== 0) return false;
  try {
    execSync("sync; echo 3 > /proc/sys/vm/drop_caches", { shell: "/bin/bash" });
    return true;
  } catch {
    return false;
  }
}

function ms(t0: number): number {
  return Math.round((performance.now() - t0) * 10) / 10;
}

/** Garbage collection time since it was last reset (V8's gc performance entries). */
let gcMs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcMs += e.duration;
}).observe({ entryTypes: ["gc"] });

async function main(): Promise<void> {
  const tokens = Array.from({ length: TOKENS }, (_, i) => (i * 7919) % 150000);
  const source = filledSequence(TOKENS);
  const dataMB = (TOKENS * SHAPE.numLayers * 2 * SHAPE.kvHeads * SHAPE.headDim * 4) / MB;
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
  for (const blockTokens of BLOCKS) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-measure-"));
    const options: Partial<CacheOptions> = {
      blockTokens,
      ramBytesMax: 2 * 1024 ** 3,
      ssdDir: path.join(dir, "ssd"),
      ssdBytesMax: 8 * 1024 ** 3,
      costModel: false,
    };
    let cache = await PrefixCache.open(SHAPE, options);
    let t0 = performance.now();
    const persist = cache.persist("m", tokens, source);
    const persistMs = ms(t0);
    t0 = performance.now();
    await cache.flush();
    const ssdWriteMs = ms(t0);

    t0 = performance.now();
    const ramMatch = cache.lookup("m", tokens);
    const lookupMs = ms(t0);
    const ramSeq = new ModelCache(SHAPE.numLayers, SHAPE.kvHeads, SHAPE.headDim);
    ramSeq.reserve(TOKENS);
    const ram = await cache.restore(ramMatch, ramSeq);
    const ramOk = sameKV(source, ramSeq, TOKENS);
    await cache.close();
    gc();

    // One server's restores: the first warms the page cache and what a restore keeps (its read
    // arenas, the layer file, compiled code); the next run warm and, as root, with the page cache
    // dropped.
    cache = await PrefixCache.open(SHAPE, options);
    const runSsd = async () => {
      const seq = new ModelCache(SHAPE.numLayers, SHAPE.kvHeads, SHAPE.headDim);
      seq.reserve(TOKENS);
      gc();
      await new Promise((resolve) => setImmediate(resolve));
      gcMs = 0;
      const report = await cache.restore(cache.lookup("m", tokens), seq);
      const gcDuring = gcMs;
      const ok = sameKV(source, seq, TOKENS);
      return { report, ok, gcMs: Math.round(gcDuring) };
    };
    await runSsd();
    const warm = await runSsd();
    const dropped = dropPageCache();
    const cold = dropped ? await runSsd() : null;
    await cache.close();
    gc();

    let ddMBps: number | null = null;
    if (dropped) {
      const segments = fs.readdirSync(path.join(dir, "ssd", "blocks")).filter((f) => f.endsWith(".kvs"));
      dropPageCache();
      t0 = performance.now();
      let bytes = 0;
      for (const f of segments) {
        const file = path.join(dir, "ssd", "blocks", f);
        bytes += fs.statSync(file).size;
        execSync(`dd if=${file} of=/dev/null bs=4M iflag=direct status=none`);
      }
      ddMBps = Math.round(bytes / MB / ((performance.now() - t0) / 1000));
    }

    const rate = (r: { restoreMs: number }) => Math.round(dataMB / (r.restoreMs / 1000));
    console.log(
      JSON.stringify({
        blockTokens,
        tokens: TOKENS,
        dataMB: Math.round(dataMB),
        persistMs,
        blocks: persist.blocksAdded,
        ssdWriteMs,
        lookupMs,
        ram: { ms: Math.round(ram.restoreMs), MBps: rate(ram), ok: ramOk },
        ssdWarm: {
          ms: Math.round(warm.report.restoreMs),
          MBps: rate(warm.report),
          stages: round(warm.report.stages),
          gcMs: warm.gcMs,
          ok: warm.ok,
        },
        ssdCold: cold
          ? {
              ms: Math.round(cold.report.restoreMs),
              MBps: rate(cold.report),
              stages: round(cold.report.stages),
              gcMs: cold.gcMs,
              ok: cold.ok,
            }
          : "needs root",
        ddDirectMBps: ddMBps,
      }),
    );
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function round(stages: object): Record<string, number> {
  return Object.fromEntries(Object.entries(stages).map(([k, v]) => [k, Math.round(v as number)]));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
