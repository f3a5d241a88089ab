import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService, type GenerateFinished } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { BUCKETS } from "../../src/telemetry/semconv";
import { ROOT, startServer, type ServerProcess } from "../helpers/server";
import type { AnyValue, KeyValue } from "./otlp/gen/opentelemetry/proto/common/v1/common_pb";
import type { Metric } from "./otlp/gen/opentelemetry/proto/metrics/v1/metrics_pb";
import { Span_SpanKind, type Span } from "./otlp/gen/opentelemetry/proto/trace/v1/trace_pb";
import { OtlpReceiver } from "./otlp/receiver";

function value(v: AnyValue | undefined): unknown {
  const x = v?.value;
  if (!x || x.case === undefined) return undefined;
  if (x.case === "intValue") return Number(x.value);
  if (x.case === "arrayValue") return x.value.values.map(value);
  if (x.case === "kvlistValue") return attrs(x.value.values);
  return x.value;
}

function attrs(kvs: KeyValue[]): Record<string, unknown> {
  return Object.fromEntries(kvs.map((kv) => [kv.key, value(kv.value)]));
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("OTLP export from the server process", () => {
  const receiver = new OtlpReceiver();
  let server: ServerProcess;
  const PROMPT = "Quixotic lighthouse keepers catalogue turquoise barnacles at dawn";
  // The orchestrator's span, as a W3C traceparent the client sends with each call.
  const traceId = crypto.randomBytes(16).toString("hex");
  const parentSpanId = crypto.randomBytes(8).toString("hex");
  const finished: GenerateFinished[] = [];

  beforeAll(async () => {
    await receiver.start();
    server = await startServer({
      env: {
        // Traces over OTLP/gRPC, metrics over OTLP/HTTP (protobuf): both transports in one run.
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${receiver.grpcPort}`,
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "grpc",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `http://127.0.0.1:${receiver.httpPort}/v1/metrics`,
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: "http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY: "100",
        OTEL_SERVICE_NAME: "kvpark-e2e",
        OTEL_RESOURCE_ATTRIBUTES: "deployment.environment.name=test",
      },
    });
    const transport = createGrpcTransport({
      baseUrl: server.url,
      interceptors: [
        (next) => (req) => {
          req.header.set("traceparent", `00-${traceId}-${parentSpanId}-01`);
          return next(req);
        },
      ],
    });
    const inference = createClient(InferenceService, transport);
    // Cold, then a RAM hit of the same prompt.
    for (let i = 0; i < 2; i++) {
      for await (const res of inference.generate({
        prompt: { kind: { case: "text", value: PROMPT } },
        sampling: { maxTokens: 5, temperature: 0 },
      }))
        if (res.event.case === "finished") finished.push(res.event.value);
    }
    await createClient(KVBlocksService, transport).lookup({
      prompt: { kind: { case: "text", value: PROMPT } },
    });
    // A graceful stop flushes the spans still batched and exports the metrics one last time.
    expect(await server.stop("SIGTERM")).toEqual({ code: 0, signal: null });
  }, 60_000);

  afterAll(async () => {
    await server?.stop("SIGKILL");
    await receiver.stop();
  });

  it("logs that telemetry is on, with what it exports", () => {
    expect(server.logs.find((l) => l.event === "telemetry")).toMatchObject({
      traces: true,
      metrics: ["otlp"],
      recordContent: false,
    });
  });

  it("exports the calls' spans over OTLP/gRPC as children of the caller's traceparent", () => {
    expect(receiver.traces.length).toBeGreaterThan(0);
    expect(receiver.traces.every((r) => r.transport === "grpc")).toBe(true);
    const resource = attrs(receiver.traces[0].message.resourceSpans[0].resource!.attributes);
    const version = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")).version;
    expect(resource).toMatchObject({
      "service.name": "kvpark-e2e",
      "service.version": version,
      "deployment.environment.name": "test",
    });
    const spans: Span[] = receiver.traces.flatMap((r) =>
      r.message.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans)),
    );
    const rpcs = spans.filter((s) => s.kind === Span_SpanKind.SERVER);
    expect(rpcs.map((s) => s.name)).toEqual([
      "kvpark.v1.InferenceService/Generate",
      "kvpark.v1.InferenceService/Generate",
      "kvpark.v1.KVBlocksService/Lookup",
    ]);
    for (const rpc of rpcs) {
      expect(hex(rpc.traceId)).toBe(traceId);
      expect(hex(rpc.parentSpanId)).toBe(parentSpanId);
    }
    for (const rpc of rpcs.slice(0, 2)) {
      const gen = spans.filter((s) => hex(s.parentSpanId) === hex(rpc.spanId));
      expect(gen.map((s) => s.name)).toEqual(["text_completion tiny"]);
      const phases = spans.filter((s) => hex(s.parentSpanId) === hex(gen[0].spanId)).map((s) => s.name);
      // The second call repeats the first prompt: the engine takes over the first call's sequence
      // (no restore phase; the decision says so).
      expect(phases.sort()).toEqual(["kvpark.decode", "kvpark.lookup", "kvpark.prefill"]);
      expect(attrs(gen[0].attributes)["kvpark.cache.decision"]).toBe(rpc === rpcs[0] ? "none" : "resident");
      expect(gen[0].events.map((e) => e.name)).toEqual(["gen_ai.first_token"]);
    }
    const gens = spans.filter((s) => s.name === "text_completion tiny").map((s) => attrs(s.attributes));
    expect(
      gens.map((g) => [g["kvpark.ttft.ms"], g["gen_ai.usage.input_tokens"], g["gen_ai.usage.output_tokens"]]),
    ).toEqual(finished.map((f) => [f.timings!.ttftMs, f.usage!.promptTokens, f.usage!.completionTokens]));
  });

  it("never exports the prompt's text", () => {
    const bytes = Buffer.concat(receiver.traces.map((r) => r.raw));
    expect(bytes.includes(Buffer.from(PROMPT))).toBe(false);
    // Its distinctive words (short ones like "at" occur in attribute names) appear nowhere either.
    for (const word of PROMPT.split(" ").filter((w) => w.length > 4))
      expect([word, bytes.includes(Buffer.from(word))]).toEqual([word, false]);
    expect(bytes.includes(Buffer.from("kvpark.prompt.kind"))).toBe(true);
  });

  it("exports metrics over OTLP/HTTP whose values agree with the responses", () => {
    expect(receiver.metrics.length).toBeGreaterThan(0);
    expect(receiver.metrics.every((r) => r.transport === "http")).toBe(true);
    // Temporality is cumulative, so the last export holds every request.
    const last = receiver.metrics[receiver.metrics.length - 1].message;
    const metrics = new Map<string, Metric>(
      last.resourceMetrics.flatMap((rm) =>
        rm.scopeMetrics.flatMap((sm) => sm.metrics.map((m) => [m.name, m])),
      ),
    );
    const histogram = (
      name: string,
      unit: string,
      bounds: readonly number[],
      values: number[],
      filter = {},
    ) => {
      const m = metrics.get(name)!;
      expect(m.unit).toBe(unit);
      if (m.data.case !== "histogram") throw new Error(`${name} is not a histogram`);
      const points = m.data.value.dataPoints.filter((p) => {
        const a = attrs(p.attributes);
        return Object.entries(filter).every(([k, v]) => a[k] === v);
      });
      expect(points.length).toBe(1);
      const p = points[0];
      expect(p.explicitBounds).toEqual([...bounds]);
      expect(Number(p.count)).toBe(values.length);
      expect(p.sum).toBe(values.reduce((a, b) => a + b, 0));
      expect(attrs(p.attributes)).toMatchObject({
        "gen_ai.request.model": "tiny",
        "gen_ai.operation.name": "text_completion",
        ...filter,
      });
    };
    const t = finished.map((f) => f.timings!);
    const u = finished.map((f) => f.usage!);
    histogram(
      "gen_ai.server.time_to_first_token",
      "s",
      BUCKETS.timeToFirstToken,
      t.map((x) => x.ttftMs / 1000),
    );
    histogram(
      "gen_ai.server.time_per_output_token",
      "s",
      BUCKETS.timePerOutputToken,
      t.map((x) => 1 / x.decodeTokensPerSecond),
    );
    histogram(
      "gen_ai.server.request.duration",
      "s",
      BUCKETS.requestDuration,
      t.map((x) => x.totalMs / 1000),
    );
    histogram(
      "kvpark.token.usage",
      "{token}",
      BUCKETS.tokens,
      u.map((x) => x.promptTokens),
      {
        "gen_ai.token.type": "input",
      },
    );
    histogram(
      "kvpark.token.usage",
      "{token}",
      BUCKETS.tokens,
      u.map((x) => x.completionTokens),
      {
        "gen_ai.token.type": "output",
      },
    );
    const reused = metrics.get("kvpark.cache.prompt_tokens")!;
    if (reused.data.case !== "sum") throw new Error("kvpark.cache.prompt_tokens is not a sum");
    expect(reused.data.value.isMonotonic).toBe(true);
    const bySource = Object.fromEntries(
      reused.data.value.dataPoints.map((p) => [attrs(p.attributes)["kvpark.cache.source"], p.value.value]),
    );
    expect(bySource).toEqual({
      ram: u[1].cachedTokens,
      ssd: 0,
      computed: u[0].promptTokens + u[1].promptTokens - u[1].cachedTokens,
    });
  });
});
