import * as fs from "node:fs";
import * as path from "node:path";
import { SpanKind, type Attributes } from "@opentelemetry/api";
import { DataPointType, type HistogramMetricData, type MetricData } from "@opentelemetry/sdk-metrics";
import type { ReadableSpan } from "@opentelemetry/sdk-trace-base";
import type { GenerateFinished, GenerateRequest, GenerateStarted } from "../../gen/kvpark/v1/inference_pb";
import { CACHE_DEFAULTS } from "../../src/cache/config";
import { BUCKETS } from "../../src/telemetry/semconv";
import { testModel } from "../helpers/server";
import { startInProcess, type InProcessServer } from "./harness";

interface Out {
  started: GenerateStarted;
  finished: GenerateFinished;
  text: string;
}

async function generate(s: InProcessServer, req: Partial<GenerateRequest>): Promise<Out> {
  const out: Partial<Out> = { text: "" };
  for await (const res of s.clients.inference.generate(req as GenerateRequest)) {
    if (res.event.case === "started") out.started = res.event.value;
    else if (res.event.case === "delta") out.text += res.event.value.text;
    else if (res.event.case === "finished") out.finished = res.event.value;
  }
  return out as Out;
}

/** The spans of the last call: waits until its RPC span has ended, then clears the exporter. */
async function takeSpans(s: InProcessServer, rpc: string): Promise<ReadableSpan[]> {
  for (let i = 0; i < 200 && !s.finishedSpans().some((sp) => sp.name === rpc); i++)
    await new Promise((r) => setTimeout(r, 10));
  const spans = s.finishedSpans();
  s.spans.reset();
  return spans;
}

const PROMPT = Array.from({ length: 200 }, (_, i) => (i * 7919 + 3 * 104729) % 500);
const REQUEST: Partial<GenerateRequest> = {
  prompt: {
    $typeName: "kvpark.v1.Prompt",
    kind: { case: "tokens", value: { $typeName: "kvpark.v1.TokenIds", ids: PROMPT } },
  },
  sampling: { $typeName: "kvpark.v1.SamplingParams", maxTokens: 6, temperature: 0, seed: 7n, stop: [] },
};
const GENERATE_RPC = "kvpark.v1.InferenceService/Generate";

const rpcAttributes = (service: string, method: string) => ({
  "rpc.system": "grpc",
  "rpc.service": service,
  "rpc.method": method,
  "rpc.grpc.status_code": 0,
});

/** Bytes of KV per token of the tiny model: layers x (K, V) x kv heads x head dim x float32. */
function kvBytesPerToken(): number {
  const c = JSON.parse(fs.readFileSync(path.join(testModel(), "config.json"), "utf8"));
  return c.num_hidden_layers * 2 * c.num_key_value_heads * (c.hidden_size / c.num_attention_heads) * 4;
}

/** Everything the generation span carries, from the response and what the engine did. */
function generationAttributes(
  out: Out,
  engine: {
    decision: string;
    blocksQueued: number;
    blocksRestored: number;
    ssdBytes: number;
    estimatedRestoreMs: number;
    estimatedRecomputeMs: number;
  },
): Attributes {
  const c = out.started.cache!;
  const t = out.finished.timings!;
  const u = out.finished.usage!;
  return {
    "gen_ai.operation.name": "text_completion",
    "gen_ai.provider.name": "kvpark",
    "gen_ai.request.model": "tiny",
    "gen_ai.response.model": "tiny",
    "gen_ai.request.max_tokens": 6,
    "gen_ai.request.temperature": 0,
    "gen_ai.request.top_p": 1,
    "gen_ai.request.top_k": 0,
    "gen_ai.request.seed": 7,
    "kvpark.prompt.kind": "tokens",
    "gen_ai.response.finish_reasons": ["length"],
    "gen_ai.usage.input_tokens": 200,
    "gen_ai.usage.output_tokens": 6,
    "gen_ai.usage.cache_read.input_tokens": u.cachedTokens,
    "kvpark.finish_reason": "max_tokens",
    "kvpark.cache.ram_tokens": c.ramTokens,
    "kvpark.cache.ssd_tokens": c.ssdTokens,
    "kvpark.cache.recomputed_tokens": c.recomputedTokens,
    "kvpark.cache.recompute_chosen_tokens": 0,
    "kvpark.cache.corrupt_blocks": 0,
    "kvpark.cache.diverged_tokens": c.divergedTokens,
    "kvpark.cache.decision": engine.decision,
    "kvpark.cache.blocks_queued": engine.blocksQueued,
    "kvpark.restore.blocks": engine.blocksRestored,
    "kvpark.restore.ssd_bytes": engine.ssdBytes,
    "kvpark.restore.ms": t.restoreMs,
    "kvpark.restore.estimated_ms": engine.estimatedRestoreMs,
    "kvpark.recompute.estimated_ms": engine.estimatedRecomputeMs,
    "kvpark.lookup.ms": t.lookupMs,
    "kvpark.prefill.ms": t.prefillMs,
    "kvpark.ttft.ms": t.ttftMs,
    "kvpark.queue.ms": t.queueMs,
    "kvpark.total.ms": t.totalMs,
    "kvpark.decode.tokens_per_second": t.decodeTokensPerSecond,
  };
}

/** Checks the tree rpc -> generation -> phases and returns the spans by name. */
function tree(spans: ReadableSpan[], phases: string[]): Record<string, ReadableSpan> {
  const byName = Object.fromEntries(spans.map((s) => [s.name, s]));
  expect(spans.map((s) => s.name).sort()).toEqual([GENERATE_RPC, "text_completion tiny", ...phases].sort());
  const rpc = byName[GENERATE_RPC];
  const gen = byName["text_completion tiny"];
  expect(rpc.kind).toBe(SpanKind.SERVER);
  expect(rpc.parentSpanContext).toBeUndefined();
  expect(gen.kind).toBe(SpanKind.INTERNAL);
  expect(gen.parentSpanContext?.spanId).toBe(rpc.spanContext().spanId);
  for (const name of phases) {
    // A restore's batches sit under the restore span; every phase sits under the generation.
    const parent = name === "kvpark.restore.batch" ? byName["kvpark.restore"] : gen;
    expect(byName[name].parentSpanContext?.spanId).toBe(parent.spanContext().spanId);
    expect(byName[name].spanContext().traceId).toBe(rpc.spanContext().traceId);
  }
  return byName;
}

const ms = (t: [number, number]) => t[0] * 1000 + t[1] / 1e6;

describe("spans and metrics (in-memory exporter)", () => {
  let s: InProcessServer;
  const outs: Out[] = [];

  beforeAll(async () => {
    // Without the cost model every cached block is restored, so the decision is known in advance;
    // without the resident sequence the same prompt again is restored from the RAM tier.
    s = await startInProcess({
      args: ["--cost-model=false", "--ssd-fsync", "none", "--resident-sequence=false"],
    });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it("cold request: generation span with lookup, prefill and decode children and a first-token event", async () => {
    const out = await generate(s, REQUEST);
    outs.push(out);
    expect(out.started.cache).toMatchObject({ ramTokens: 0, ssdTokens: 0, recomputedTokens: 200 });
    const spans = tree(await takeSpans(s, GENERATE_RPC), [
      "kvpark.lookup",
      "kvpark.prefill",
      "kvpark.decode",
    ]);
    const t = out.finished.timings!;
    expect(spans[GENERATE_RPC].attributes).toEqual(rpcAttributes("kvpark.v1.InferenceService", "Generate"));
    // Prompt and answer (205 tokens of KV) make three full blocks of 64 and a partial one.
    expect(spans["text_completion tiny"].attributes).toEqual(
      generationAttributes(out, {
        decision: "none",
        blocksQueued: 4,
        blocksRestored: 0,
        ssdBytes: 0,
        estimatedRestoreMs: 0,
        estimatedRecomputeMs: 0,
      }),
    );
    expect(spans["kvpark.lookup"].attributes).toEqual({ "kvpark.lookup.ms": t.lookupMs });
    expect(spans["kvpark.prefill"].attributes).toEqual({
      "kvpark.prefill.tokens": 200,
      "kvpark.prefill.ms": t.prefillMs,
    });
    expect(spans["kvpark.decode"].attributes).toEqual({
      "gen_ai.usage.output_tokens": 6,
      "kvpark.decode.tokens_per_second": t.decodeTokensPerSecond,
    });
    const gen = spans["text_completion tiny"];
    expect(gen.events.map((e) => [e.name, e.attributes])).toEqual([
      ["gen_ai.first_token", { "kvpark.ttft.ms": t.ttftMs }],
    ]);
    // The phases tile the request: lookup, then prefill up to the first token, then decode to the end.
    expect(spans["kvpark.prefill"].startTime).toEqual(spans["kvpark.lookup"].endTime);
    expect(spans["kvpark.decode"].startTime).toEqual(spans["kvpark.prefill"].endTime);
    expect(gen.events[0].time).toEqual(spans["kvpark.decode"].startTime);
    expect(ms(gen.events[0].time) - ms(gen.startTime)).toBeCloseTo(t.ttftMs, 3);
  });

  it("RAM hit: a restore span from the RAM tier", async () => {
    const out = await generate(s, REQUEST);
    outs.push(out);
    expect(out.started.cache).toMatchObject({ ramTokens: 199, ssdTokens: 0, recomputedTokens: 1 });
    const spans = tree(await takeSpans(s, GENERATE_RPC), [
      "kvpark.lookup",
      "kvpark.restore",
      "kvpark.restore.batch",
      "kvpark.prefill",
      "kvpark.decode",
    ]);
    const t = out.finished.timings!;
    const batch = spans["kvpark.restore.batch"];
    // One run of 4 RAM blocks: 199 tokens x 2 layers x (K, V) x 2 KV heads x 16 dims x 4 bytes.
    expect(batch.attributes).toEqual({
      "kvpark.restore.tier": "ram",
      "kvpark.restore.blocks": 4,
      "kvpark.restore.batch.tokens": 199,
      "kvpark.restore.batch.bytes": 199 * 2 * 2 * 2 * 16 * 4,
      "kvpark.restore.batch.ms": batch.attributes["kvpark.restore.batch.ms"],
    });
    expect(batch.attributes["kvpark.restore.batch.ms"]).toBeGreaterThan(0);
    expect(batch.attributes["kvpark.restore.batch.ms"]).toBeLessThanOrEqual(t.restoreMs);
    // Every block was already in RAM, so nothing new is queued for the SSD.
    expect(spans["text_completion tiny"].attributes).toEqual(
      generationAttributes(out, {
        decision: "restore",
        blocksQueued: 0,
        blocksRestored: 4,
        ssdBytes: 0,
        estimatedRestoreMs: 0,
        estimatedRecomputeMs: 0,
      }),
    );
    const restore = spans["kvpark.restore"].attributes;
    // All of a RAM hit's restore is importing RAM blocks; the SSD stages did not run.
    expect(restore).toEqual({
      "kvpark.restore.tier": "ram",
      "kvpark.cache.ram_tokens": 199,
      "kvpark.cache.ssd_tokens": 0,
      "kvpark.restore.blocks": 4,
      "kvpark.restore.ssd_bytes": 0,
      "kvpark.restore.ms": t.restoreMs,
      "kvpark.restore.ram_ms": restore["kvpark.restore.ram_ms"],
      "kvpark.restore.ssd_read_wait_ms": 0,
      "kvpark.restore.shared_read_wait_ms": 0,
      "kvpark.restore.verify_ms": 0,
      "kvpark.restore.stage_ms": 0,
      "kvpark.restore.import_ms": 0,
      "kvpark.cache.decision": "restore",
      "kvpark.cache.corrupt_blocks": 0,
    });
    expect(restore["kvpark.restore.ram_ms"]).toBeGreaterThan(0);
    expect(restore["kvpark.restore.ram_ms"]).toBeLessThanOrEqual(t.restoreMs);
    // The client gets the same stages in its Timings, and the first token's trip to the front end.
    expect(t).toMatchObject({
      restoreRamMs: restore["kvpark.restore.ram_ms"],
      restoreSsdReadWaitMs: 0,
      restoreSharedReadWaitMs: 0,
      restoreVerifyMs: 0,
      restoreStageMs: 0,
      restoreImportMs: 0,
    });
    expect(t.firstTokenIpcMs).toBeGreaterThan(0);
    expect(spans["kvpark.prefill"].attributes).toEqual({
      "kvpark.prefill.tokens": 1,
      "kvpark.prefill.ms": t.prefillMs,
    });
    expect(spans["kvpark.restore"].startTime).toEqual(spans["kvpark.lookup"].endTime);
    expect(spans["kvpark.prefill"].startTime).toEqual(spans["kvpark.restore"].endTime);
  });

  it("Lookup and GetBlocks: keys, hits and misses, bytes and the checksum result", async () => {
    const lookup = await s.clients.kv.lookup({
      prompt: { kind: { case: "tokens", value: { ids: PROMPT } } },
    });
    const lookupSpans = await takeSpans(s, "kvpark.v1.KVBlocksService/Lookup");
    expect(lookupSpans.map((sp) => [sp.name, sp.attributes])).toEqual([
      [
        "kvpark.v1.KVBlocksService/Lookup",
        {
          ...rpcAttributes("kvpark.v1.KVBlocksService", "Lookup"),
          "kvpark.lookup.result": "hit",
          "kvpark.lookup.prompt_tokens": 200,
          "kvpark.lookup.cached_tokens": 200,
          "kvpark.cache.ram_tokens": 200,
          "kvpark.cache.ssd_tokens": 0,
          "kvpark.lookup.tier": "ram",
          "kvpark.blocks.found": 4,
        },
      ],
    ]);
    const unknown = new Uint8Array(32).fill(7);
    const keys = [...lookup.blocks.map((b) => b.key), unknown];
    let bytes = 0;
    const results: string[] = [];
    for await (const res of s.clients.kv.getBlocks({ keys })) {
      results.push(res.result.case!);
      if (res.result.case === "block") bytes += res.result.value.payload.byteLength;
    }
    expect(results).toEqual(["block", "block", "block", "block", "error"]);
    const spans = await takeSpans(s, "kvpark.v1.KVBlocksService/GetBlocks");
    expect(spans.map((sp) => [sp.name, sp.kind, sp.attributes])).toEqual([
      [
        "kvpark.v1.KVBlocksService/GetBlocks",
        SpanKind.SERVER,
        {
          ...rpcAttributes("kvpark.v1.KVBlocksService", "GetBlocks"),
          "kvpark.blocks.requested": 5,
          "kvpark.blocks.keys": keys.map((k) => Buffer.from(k).toString("hex")),
          "kvpark.blocks.found": 4,
          "kvpark.blocks.missing": 1,
          // Blocks stored on SSD are served from there (no MLX work), though they are in RAM too.
          "kvpark.blocks.ram": 0,
          "kvpark.blocks.ssd": 4,
          "kvpark.blocks.corrupt": 0,
          "kvpark.blocks.checksum": "ok",
          "kvpark.blocks.bytes": bytes,
        },
      ],
    ]);
  });

  it("metrics agree with the timings and usage of the responses", async () => {
    const stats = await s.clients.kv.stats({});
    const rm = await s.collect();
    const all = new Map<string, MetricData>(
      rm.scopeMetrics.flatMap((sm) => sm.metrics.map((m) => [m.descriptor.name, m])),
    );
    const genAttrs = {
      "gen_ai.operation.name": "text_completion",
      "gen_ai.provider.name": "kvpark",
      "gen_ai.request.model": "tiny",
      "gen_ai.response.model": "tiny",
    };
    const histogram = (
      name: string,
      unit: string,
      buckets: readonly number[],
      values: number[],
      attributes: Attributes,
    ) => {
      const m = all.get(name) as HistogramMetricData;
      expect(m.dataPointType).toBe(DataPointType.HISTOGRAM);
      expect(m.descriptor.unit).toBe(unit);
      const point = m.dataPoints.find((p) => JSON.stringify(p.attributes) === JSON.stringify(attributes))!;
      expect(point.attributes).toEqual(attributes);
      const counts = new Array(buckets.length + 1).fill(0);
      for (const v of values)
        counts[buckets.findIndex((b) => v <= b) === -1 ? buckets.length : buckets.findIndex((b) => v <= b)]++;
      expect(point.value).toEqual({
        buckets: { boundaries: [...buckets], counts },
        count: values.length,
        sum: values.reduce((a, b) => a + b, 0),
        min: Math.min(...values),
        max: Math.max(...values),
      });
    };
    const t = outs.map((o) => o.finished.timings!);
    histogram(
      "gen_ai.server.time_to_first_token",
      "s",
      BUCKETS.timeToFirstToken,
      t.map((x) => x.ttftMs / 1000),
      genAttrs,
    );
    histogram(
      "gen_ai.server.time_per_output_token",
      "s",
      BUCKETS.timePerOutputToken,
      t.map((x) => 1 / x.decodeTokensPerSecond),
      genAttrs,
    );
    histogram(
      "gen_ai.server.request.duration",
      "s",
      BUCKETS.requestDuration,
      t.map((x) => x.totalMs / 1000),
      genAttrs,
    );
    histogram("kvpark.token.usage", "{token}", BUCKETS.tokens, [200, 200], {
      ...genAttrs,
      "gen_ai.token.type": "input",
    });
    histogram("kvpark.token.usage", "{token}", BUCKETS.tokens, [6, 6], {
      ...genAttrs,
      "gen_ai.token.type": "output",
    });
    histogram("kvpark.cache.restore.duration", "s", BUCKETS.restoreDuration, [t[1].restoreMs / 1000], {
      "kvpark.restore.tier": "ram",
    });
    const sums = (name: string) =>
      Object.fromEntries(
        all.get(name)!.dataPoints.map((p) => [Object.values(p.attributes).join(","), p.value]),
      );
    expect(sums("kvpark.cache.prompt_tokens")).toEqual({ ram: 199, ssd: 0, computed: 201 });
    expect(sums("kvpark.cache.decisions")).toEqual({ none: 1, restore: 1 });
    expect(sums("kvpark.cache.hit_ratio")).toEqual({ "": 199 / 400 });
    expect(sums("kvpark.cache.size")).toEqual({
      ram: Number(stats.ram!.bytes),
      ssd: Number(stats.ssd!.bytes),
    });
    expect(sums("kvpark.cache.blocks")).toEqual({
      ram: Number(stats.ram!.blocks),
      ssd: Number(stats.ssd!.blocks),
    });
    expect(sums("kvpark.cache.block.hits")).toEqual({
      ram: Number(stats.ram!.hits),
      ssd: Number(stats.ssd!.hits),
    });
    expect(sums("kvpark.cache.corrupt_blocks")).toEqual({ "": 0 });
    expect(sums("kvpark.cache.write.errors")).toEqual({ ENOSPC: 0, EIO: 0, other: 0 });
    expect(sums("kvpark.cache.write_queue.depth")).toEqual({ "": stats.writeQueueDepth });
    // The engine's gauges read its last report, which Stats returns too; none before its first report.
    const engineMetrics = [
      "kvpark.engine.memory.rss",
      "kvpark.engine.memory.limit",
      "kvpark.engine.memory.reserved",
      "kvpark.engine.sequences",
      "kvpark.engine.decode.batch_size",
      "kvpark.engine.heap.used",
      "kvpark.engine.memory.kept",
      "kvpark.engine.memory.purges",
    ];
    if (stats.engine) {
      expect(sums("kvpark.engine.memory.limit")).toEqual({ "": Number(stats.engine.memoryMaxBytes) });
      expect(sums("kvpark.engine.memory.rss")[""]).toBeGreaterThan(0);
      expect(Object.keys(sums("kvpark.engine.sequences")).sort()).toEqual(["running", "waiting"]);
      for (const name of engineMetrics) expect(all.get(name)!.dataPoints.length).toBeGreaterThan(0);
      expect(sums("kvpark.engine.heap.used")[""]).toBeGreaterThan(0);
      expect(Object.keys(sums("kvpark.engine.memory.kept"))).toEqual([""]);
      expect(Number.isInteger(sums("kvpark.engine.memory.purges")[""])).toBe(true);
      // The event-loop delay comes once the engine has sampled a window (not in its very first report).
      if (all.get("kvpark.engine.eventloop.delay")?.dataPoints.length)
        expect(Object.keys(sums("kvpark.engine.eventloop.delay")).sort()).toEqual(["max", "mean", "p99"]);
    } else {
      for (const name of engineMetrics) expect([name, all.get(name)?.dataPoints ?? []]).toEqual([name, []]);
    }
    // The front end's own process and runtime metrics (host-metrics, runtime-node).
    for (const name of [
      "process.cpu.time",
      "process.memory.usage",
      "v8js.memory.heap.used",
      "nodejs.eventloop.delay.p99",
      "nodejs.eventloop.utilization",
    ])
      expect([name, (all.get(name)?.dataPoints.length ?? 0) > 0]).toEqual([name, true]);
    const rpcCalls = Object.fromEntries(
      (all.get("rpc.server.call.duration") as HistogramMetricData).dataPoints.map((p) => [
        `${p.attributes["rpc.method"]}:${p.attributes["rpc.grpc.status_code"]}`,
        p.value.count,
      ]),
    );
    expect(rpcCalls).toEqual({ "Generate:0": 2, "Lookup:0": 1, "GetBlocks:0": 1, "Stats:0": 1 });
  });

  it("SSD restore after a restart on the same data directory", async () => {
    await s.stop();
    s = await startInProcess({ dataDir: s.dataDir, args: ["--cost-model=false", "--ssd-fsync", "none"] });
    const out = await generate(s, REQUEST);
    expect(out.started.cache).toMatchObject({ ramTokens: 0, ssdTokens: 199, recomputedTokens: 1 });
    const spans = tree(await takeSpans(s, GENERATE_RPC), [
      "kvpark.lookup",
      "kvpark.restore",
      "kvpark.restore.batch",
      "kvpark.prefill",
      "kvpark.decode",
    ]);
    const t = out.finished.timings!;
    const ssdBytes = 199 * kvBytesPerToken();
    // A fresh engine estimates with the cost model's priors; the estimates are reported even when the
    // cost model does not decide.
    const estimates = {
      estimatedRestoreMs: ssdBytes / (CACHE_DEFAULTS.ssdRestoreBytesPerSecondPrior / 1000),
      estimatedRecomputeMs: 199 / (CACHE_DEFAULTS.prefillTokensPerSecondPrior / 1000),
    };
    expect(spans["text_completion tiny"].attributes).toEqual(
      generationAttributes(out, {
        decision: "restore",
        blocksQueued: 0,
        blocksRestored: 4,
        ssdBytes,
        ...estimates,
      }),
    );
    const restore = spans["kvpark.restore"].attributes;
    const stage = (name: string) => restore[`kvpark.restore.${name}_ms`] as number;
    expect(restore).toEqual({
      "kvpark.restore.tier": "ssd",
      "kvpark.cache.ram_tokens": 0,
      "kvpark.cache.ssd_tokens": 199,
      "kvpark.restore.blocks": 4,
      "kvpark.restore.ssd_bytes": ssdBytes,
      "kvpark.restore.ms": t.restoreMs,
      "kvpark.restore.ram_ms": 0,
      "kvpark.restore.ssd_read_wait_ms": stage("ssd_read_wait"),
      "kvpark.restore.shared_read_wait_ms": 0,
      "kvpark.restore.verify_ms": stage("verify"),
      "kvpark.restore.stage_ms": stage("stage"),
      "kvpark.restore.import_ms": stage("import"),
      "kvpark.cache.decision": "restore",
      "kvpark.cache.corrupt_blocks": 0,
    });
    // The stages are parts of the restore: the SSD's, none of them negative, bringing the blocks in took time.
    const stages = ["ssd_read_wait", "verify", "stage", "import"].map(stage);
    for (const ms of stages) expect(ms).toBeGreaterThanOrEqual(0);
    expect(stage("stage") + stage("import")).toBeGreaterThan(0);
    expect(stages.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(t.restoreMs);
    expect(t).toMatchObject({
      restoreRamMs: 0,
      restoreSsdReadWaitMs: stage("ssd_read_wait"),
      restoreSharedReadWaitMs: 0,
      restoreVerifyMs: stage("verify"),
      restoreStageMs: stage("stage"),
      restoreImportMs: stage("import"),
    });
    expect(t.firstTokenIpcMs).toBeGreaterThan(0);
    // The 4 blocks fit one SSD read batch; its bytes are what the restore read.
    const batch = spans["kvpark.restore.batch"];
    expect(batch.attributes).toEqual({
      "kvpark.restore.tier": "ssd",
      "kvpark.restore.blocks": 4,
      "kvpark.restore.batch.tokens": 199,
      "kvpark.restore.batch.bytes": ssdBytes,
      "kvpark.restore.batch.ms": batch.attributes["kvpark.restore.batch.ms"],
    });
    const rm = await s.collect();
    const metric = (name: string) =>
      rm.scopeMetrics.flatMap((sm) => sm.metrics).find((m) => m.descriptor.name === name)!;
    const size = metric("kvpark.cache.restore.ssd_size") as HistogramMetricData;
    expect(size.descriptor.unit).toBe("By");
    expect(size.dataPoints.map((p) => [p.attributes, p.value.count, p.value.sum])).toEqual([
      [{ "kvpark.restore.tier": "ssd" }, 1, ssdBytes],
    ]);
    const throughput = metric("kvpark.cache.restore.throughput") as HistogramMetricData;
    expect(throughput.descriptor.unit).toBe("By/s");
    expect(throughput.dataPoints.map((p) => p.value.sum)).toEqual([ssdBytes / (t.restoreMs / 1000)]);
  });

  it("records no prompt or output text unless --telemetry-record-content", async () => {
    const text = "Marmalade zeppelins whistle quietly over Reykjavik";
    const textRequest = {
      prompt: { kind: { case: "text" as const, value: text } },
      sampling: { maxTokens: 4, temperature: 0 },
    };
    const out = await generate(s, textRequest as Partial<GenerateRequest>);
    const dump = JSON.stringify(
      (await takeSpans(s, GENERATE_RPC)).map((sp) => [sp.name, sp.attributes, sp.events]),
    );
    for (const word of text.split(" ")) expect(dump).not.toContain(word);
    expect(dump).toContain('"kvpark.prompt.kind":"text"');
    expect(out.text.length).toBeGreaterThan(0);

    await s.stop();
    s = await startInProcess({ dataDir: s.dataDir, args: ["--telemetry-record-content"] });
    const recorded = await generate(s, textRequest as Partial<GenerateRequest>);
    const gen = (await takeSpans(s, GENERATE_RPC)).find((sp) => sp.name === "text_completion tiny")!;
    expect(gen.attributes["gen_ai.input.messages"]).toBe(
      JSON.stringify([{ role: "user", parts: [{ type: "text", content: text }] }]),
    );
    expect(gen.attributes["gen_ai.output.messages"]).toBe(
      JSON.stringify([
        { role: "assistant", parts: [{ type: "text", content: recorded.text }], finish_reason: "length" },
      ]),
    );
  });
});
