// The shared tier on Redis, two kvpark nodes and one redis-server on this machine, in one run:
//   recompute   node A computing a prompt no node has seen (its cold TTFT, with the tier's lookup miss)
//   shared      node B, which never saw the prompt, restoring it from Redis (node A wrote it)
//   local SSD   node A again, the prompt evicted from its RAM tier and the page cache dropped
// and the shared tier's restore throughput beside redis-benchmark GETs of values of the same size
// on the same server (one connection; one GET at a time, and pipelined as a restore batch reads).
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Tier } from "../../gen/kvpark/v1/common_pb";
import { connect, generate, type Clients } from "../lib/client";
import type { ModelShape } from "../lib/model";
import { RedisServer } from "../lib/redis";
import { BenchServer } from "../lib/server";
import { dropPageCache, fmt, median, randomTokens, sleep, type Progress } from "../lib/util";

export interface SharedOptions {
  model: ModelShape;
  contexts: number[];
  runs: number;
  workDir: string;
  progress: Progress;
  tokenLimit: number;
}

export interface SharedContextResult {
  contextTokens: number;
  /** Server-measured TTFT per run, ms. */
  recomputeTtftMs: number[];
  sharedTtftMs: number[];
  ssdTtftMs: number[];
  /** Node B's restore from the tier: ms, tokens, bytes of values read. */
  sharedRestoreMs: number[];
  sharedTokens: number[];
  sharedValueBytes: number[];
  /** Node A's restore from SSD, ms, and tokens. */
  ssdRestoreMs: number[];
  ssdTokens: number[];
  warnings: string[];
}

export interface RedisBenchmarkResult {
  valueBytes: number;
  requests: number;
  /** GETs per second with one GET in flight, and with `pipeline` in flight, on one connection. */
  getsPerSecond: number;
  pipeline: number;
  pipelinedGetsPerSecond: number;
}

export interface SharedResult {
  redisVersion: string;
  contexts: SharedContextResult[];
  redisBenchmark: RedisBenchmarkResult | null;
  blockTokens: number;
  markdown: string;
}

/** Blocks node B's restore reads together (a 16 MiB batch), for the pipelined redis-benchmark. */
function batchBlocks(model: ModelShape, blockTokens: number): number {
  return Math.max(1, Math.floor((16 * 1024 * 1024) / (model.kvBytesPerToken * blockTokens)));
}

async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`shared: timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function sharedStats(c: Clients) {
  const s = await c.kv.stats({});
  return { shared: s.shared!, writeQueueDepth: s.writeQueueDepth, blockTokens: s.blockTokens };
}

/** redis-benchmark SET then GET of `valueBytes` values; GETs per second (CSV output). */
function redisBenchmark(port: number, valueBytes: number, requests: number, pipeline: number): number {
  const r = spawnSync(
    "redis-benchmark",
    [
      "-h",
      "127.0.0.1",
      "-p",
      String(port),
      "-t",
      "set,get",
      "-d",
      String(valueBytes),
      "-n",
      String(requests),
      "-c",
      "1",
      "-P",
      String(pipeline),
      "--csv",
    ],
    { encoding: "utf8", maxBuffer: 1 << 24 },
  );
  if (r.status !== 0) throw new Error(`redis-benchmark failed: ${r.stderr}`);
  const line = r.stdout.split("\n").find((l) => l.startsWith('"GET"'));
  if (!line) throw new Error(`redis-benchmark printed no GET line: ${r.stdout}`);
  return Number(JSON.parse(`[${line}]`)[1]);
}

export async function runShared(o: SharedOptions): Promise<SharedResult> {
  const { model, progress } = o;
  const redis = await RedisServer.start(["--maxmemory", "8gb", "--maxmemory-policy", "allkeys-lru"]);
  const version = spawnSync("redis-server", ["--version"], { encoding: "utf8" }).stdout.trim();
  const dirA = path.join(o.workDir, "shared-a");
  const dirB = path.join(o.workDir, "shared-b");
  for (const d of [dirA, dirB]) fs.mkdirSync(d, { recursive: true });
  const tier = ["--shared-tier", redis.url, "--shared-tier-timeout-ms", "5000"];
  progress.log(`shared: redis-server on ${redis.port}, nodes A and B with separate data directories`);
  let a: BenchServer | undefined;
  let b: BenchServer | undefined;
  try {
    [a, b] = await Promise.all([
      BenchServer.start({
        dataDir: dirA,
        model: model.dir,
        args: [...tier, "--shared-tier-admission", "all"],
      }),
      BenchServer.start({ dataDir: dirB, model: model.dir, args: tier }),
    ]);
    const ca = connect(a.url);
    const cb = connect(b.url);
    // One-time costs (first touch, compiling for new shapes) before anything is measured.
    for (const c of [ca, cb])
      await generate(c, { tokens: randomTokens(99, 320, o.tokenLimit) }, { maxTokens: 2, persist: false });
    const blockTokens = (await sharedStats(ca)).blockTokens;
    const contexts: SharedContextResult[] = [];
    for (const L of o.contexts) {
      const res: SharedContextResult = {
        contextTokens: L,
        recomputeTtftMs: [],
        sharedTtftMs: [],
        ssdTtftMs: [],
        sharedRestoreMs: [],
        sharedTokens: [],
        sharedValueBytes: [],
        ssdRestoreMs: [],
        ssdTokens: [],
        warnings: [],
      };
      for (let r = 0; r < o.runs; r++) {
        const prompt = randomTokens(7000 * L + r + 1, L, o.tokenLimit);
        const before = await sharedStats(ca);
        const cold = await generate(ca, { tokens: prompt }, { maxTokens: 1 });
        res.recomputeTtftMs.push(cold.timings.ttftMs);
        const blocks = Math.ceil(L / blockTokens);
        await waitFor("node A's writes", async () => {
          const s = await sharedStats(ca);
          return (
            Number(s.shared.writtenBlocks) >= Number(before.shared.writtenBlocks) + blocks &&
            s.writeQueueDepth === 0
          );
        });
        await ca.kv.evict({
          blocks: { target: { case: "prompt", value: { kind: { case: "tokens", value: { ids: prompt } } } } },
          tier: Tier.RAM,
        });
        // Alternate which side goes first, so neither always finds the machine in the same state.
        const sides = [
          async () => {
            const s0 = await sharedStats(cb);
            const hit = await generate(cb, { tokens: prompt }, { maxTokens: 1, persist: false });
            const s1 = await sharedStats(cb);
            res.sharedTtftMs.push(hit.timings.ttftMs);
            res.sharedRestoreMs.push(hit.timings.restoreMs);
            res.sharedTokens.push(hit.cache.sharedTokens);
            res.sharedValueBytes.push(Number(s1.shared.readBytes) - Number(s0.shared.readBytes));
            if (hit.cache.sharedTokens !== L - 1)
              res.warnings.push(`run ${r}: ${hit.cache.sharedTokens} shared tokens`);
          },
          async () => {
            dropPageCache();
            const hit = await generate(ca, { tokens: prompt }, { maxTokens: 1, persist: false });
            res.ssdTtftMs.push(hit.timings.ttftMs);
            res.ssdRestoreMs.push(hit.timings.restoreMs);
            res.ssdTokens.push(hit.cache.ssdTokens);
            if (hit.cache.ssdTokens !== L - 1)
              res.warnings.push(`run ${r}: ${hit.cache.ssdTokens} SSD tokens`);
          },
        ];
        for (const side of r % 2 === 0 ? sides : [...sides].reverse()) await side();
        progress.log(
          `shared ${L}: run ${r + 1}/${o.runs}: recompute ${fmt(cold.timings.ttftMs)} ms, shared ${fmt(res.sharedTtftMs.at(-1))} ms, local SSD ${fmt(res.ssdTtftMs.at(-1))} ms`,
        );
      }
      contexts.push(res);
    }
    const s = (await sharedStats(cb)).shared;
    const valueBytes = Math.round(Number(s.readBytes) / Math.max(1, Number(s.readBlocks)));
    const pipeline = batchBlocks(model, blockTokens);
    const requests = Math.max(50, Math.round(2e9 / valueBytes / 4));
    progress.log(
      `shared: redis-benchmark GET of ${valueBytes}-byte values, one at a time and ${pipeline} pipelined`,
    );
    const redisBench: RedisBenchmarkResult = {
      valueBytes,
      requests,
      getsPerSecond: redisBenchmark(redis.port, valueBytes, requests, 1),
      pipeline,
      pipelinedGetsPerSecond: redisBenchmark(redis.port, valueBytes, requests, pipeline),
    };
    return {
      redisVersion: version,
      contexts,
      redisBenchmark: redisBench,
      blockTokens,
      markdown: sharedMarkdown(contexts, redisBench, model, blockTokens, version, o.runs),
    };
  } finally {
    await Promise.all([a?.stop(), b?.stop()]);
    await redis.stop();
  }
}

function sharedMarkdown(
  contexts: SharedContextResult[],
  rb: RedisBenchmarkResult,
  model: ModelShape,
  blockTokens: number,
  version: string,
  runs: number,
): string {
  const mbps = (bytes: number, ms: number) => (ms > 0 ? bytes / 1e6 / (ms / 1000) : Number.NaN);
  const rows = contexts.map((c) => {
    const rec = median(c.recomputeTtftMs);
    const sh = median(c.sharedTtftMs);
    const ssd = median(c.ssdTtftMs);
    const valueRate = median(c.sharedValueBytes.map((b, i) => mbps(b, c.sharedRestoreMs[i])));
    const kvRate = median(
      c.sharedTokens.map((t, i) => mbps(t * model.kvBytesPerToken, c.sharedRestoreMs[i])),
    );
    const ssdRate = median(c.ssdTokens.map((t, i) => mbps(t * model.kvBytesPerToken, c.ssdRestoreMs[i])));
    return (
      `| ${c.contextTokens} | ${fmt(rec)} | ${fmt(sh)} (${fmt(rec / sh, 1)}x faster) | ${fmt(ssd)} | ` +
      `${fmt(median(c.sharedRestoreMs))} | ${fmt(valueRate)} / ${fmt(kvRate)} | ${fmt(ssdRate)} |`
    );
  });
  const get1 = (rb.getsPerSecond * rb.valueBytes) / 1e6;
  const getP = (rb.pipelinedGetsPerSecond * rb.valueBytes) / 1e6;
  return [
    `Two kvpark nodes with separate data directories and one local ${version.split(" ").slice(0, 3).join(" ")} ` +
      `(loopback): node A computes a prompt and writes its blocks to Redis; node B, which never saw it, ` +
      `restores it from the tier; node A then restores it from its own SSD (evicted from its RAM tier, ` +
      `page cache dropped). Server-measured TTFT in ms, median of ${runs} run(s) per context, one generated ` +
      `token, sides alternating which goes first. Restore MB/s: bytes of values read from Redis (the KVBlock ` +
      `messages) and of KV restored (float32), over the restore's time (reads, verification, staging, load).`,
    "",
    "| context | recompute (node A, cold) | shared tier (node B) | local SSD (node A) | shared restore ms | shared restore MB/s (values / KV) | SSD restore MB/s (KV) |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...rows,
    "",
    `redis-benchmark on the same server, one connection, values of ${rb.valueBytes} bytes (one block of ` +
      `${blockTokens} tokens, as stored): GET ${fmt(get1)} MB/s one at a time, ${fmt(getP)} MB/s with ` +
      `${rb.pipeline} in flight (one restore batch); ${rb.requests} requests each.`,
  ].join("\n");
}
