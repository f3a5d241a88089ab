import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as fs from "node:fs";
import { Writable } from "node:stream";
import pino from "pino";
import { context, diag, metrics, propagation, trace } from "@opentelemetry/api";
import { loadConfig } from "../../src/config";
import { LoadingLog } from "../../src/frontend/engine-client";
import type { Logger } from "../../src/log";
import { startTelemetry } from "../../src/telemetry";
import { TelemetryFailureLog } from "../../src/telemetry/sdk";
import { BUCKETS } from "../../src/telemetry/semconv";
import { startInProcess } from "./harness";

/** A JSON logger whose lines the test reads back. */
function capture(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      out.push(String(chunk));
      cb();
    },
  });
  const log = pino({ level: "info" }, stream);
  return {
    log,
    lines: () =>
      out
        .join("")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
  };
}

/** A local port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

describe("model loading progress", () => {
  test("a load of many progress messages logs its start and each quarter: at most five lines", () => {
    const l = new LoadingLog();
    const logged: number[] = [];
    // The engine's messages, one per ~5 % of the weights, as Engine.open sends them.
    for (let done = 0; done <= 1000; done += 37) {
      const step = l.step("weights", Math.min(done, 1000), 1000);
      if (step !== undefined) logged.push(step);
    }
    const last = l.step("weights", 1000, 1000);
    if (last !== undefined) logged.push(last);
    expect(logged).toEqual([0, 25, 50, 75, 100]);
  });

  test("generating a preset logs its start and end; a restart logs its load again", () => {
    const l = new LoadingLog();
    expect(l.step("generating model small", 0, 1)).toBe(0);
    expect(l.step("generated model small", 1, 1)).toBe(100);
    expect(l.step("weights", 300, 1000)).toBe(25);
    expect(l.step("weights", 1000, 1000)).toBe(100);
    expect(l.step("weights", 1000, 1000)).toBeUndefined();
    l.reset();
    expect(l.step("weights", 1000, 1000)).toBe(100);
  });
});

describe("histogram buckets", () => {
  test("time to first token, request and call duration reach 10 minutes", () => {
    expect(BUCKETS.timeToFirstToken.at(-1)).toBe(600);
    expect(BUCKETS.requestDuration.at(-1)).toBe(600);
    expect(BUCKETS.rpcDuration.at(-1)).toBe(600);
    for (const b of [BUCKETS.timeToFirstToken, BUCKETS.requestDuration, BUCKETS.rpcDuration])
      expect([...b].sort((x, y) => x - y)).toEqual([...b]);
  });
});

describe("telemetry failures", () => {
  test("the first failure of a kind is logged at warn, repeats once per quiet period with a count", () => {
    const { log, lines } = capture();
    let now = 1000;
    const f = new TelemetryFailureLog(log, 60_000, () => now);
    f.failed("telemetry export failed", new Error("connect ECONNREFUSED"), "export");
    for (let i = 0; i < 10; i++) {
      now += 1000;
      f.failed("telemetry export failed", new Error("connect ECONNREFUSED"), "export");
    }
    f.failed("something else");
    now += 60_000;
    f.failed("telemetry export failed", new Error("connect ECONNREFUSED"), "export");
    expect(lines().map((l) => [l.level, l.event, l.msg, l.detail, l.suppressed])).toEqual([
      [
        40,
        "otel",
        "telemetry export failed (repeats are reported at most every 60 s)",
        "connect ECONNREFUSED",
        undefined,
      ],
      [40, "otel", "something else (repeats are reported at most every 60 s)", undefined, undefined],
      [40, "otel", "telemetry export failed (10 more since the last report)", "connect ECONNREFUSED", 10],
    ]);
  });

  test("an OTLP collector that is not there is logged once, at warn, and nothing at error", async () => {
    const port = await closedPort();
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-logs-"));
    const config = loadConfig(["--port", "0", "--data-dir", dataDir], {});
    const { log, lines } = capture();
    const telemetry = await startTelemetry(
      config,
      log,
      {},
      {
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
        OTEL_METRIC_EXPORT_INTERVAL: "200",
        OTEL_BSP_SCHEDULE_DELAY: "100",
      },
    );
    try {
      expect(telemetry).toBeDefined();
      trace.getTracer("t").startSpan("s").end();
      // Several export intervals, each failing.
      await new Promise((r) => setTimeout(r, 2000));
      const otel = lines().filter((l) => l.event === "otel");
      expect(otel.length).toBeGreaterThanOrEqual(1);
      expect(otel.length).toBeLessThanOrEqual(2); // one for metrics, at most one for spans
      expect(lines().filter((l) => (l.level as number) >= 50)).toEqual([]);
      expect(new Set(otel.map((l) => l.level))).toEqual(new Set([40]));
    } finally {
      await telemetry?.shutdown(1000);
      trace.disable();
      metrics.disable();
      propagation.disable();
      context.disable();
      diag.disable();
    }
  }, 20_000);
});

describe("request log lines", () => {
  test("an RPC's and an HTTP API call's lines carry the trace_id and span_id of their spans", async () => {
    const { log, lines } = capture();
    const s = await startInProcess({ log });
    try {
      await s.clients.kv.stats({});
      const res = await fetch(`${s.url}/v1/models`);
      expect(res.status).toBe(200);
      await res.text();
      for (let i = 0; i < 100 && lines().filter((l) => l.msg === "request done").length < 2; i++)
        await new Promise((r) => setTimeout(r, 10));
      const spans = s.finishedSpans();
      const ids = (name: string) => {
        const sp = spans.find((x) => x.name === name)!;
        return { trace_id: sp.spanContext().traceId, span_id: sp.spanContext().spanId };
      };
      const done = lines().filter((l) => l.msg === "request done");
      const rpc = done.find((l) => l.event === "rpc")!;
      expect({ method: rpc.method, trace_id: rpc.trace_id, span_id: rpc.span_id }).toEqual({
        method: "kvpark.v1.KVBlocksService/Stats",
        ...ids("kvpark.v1.KVBlocksService/Stats"),
      });
      const http = done.find((l) => l.event === "http")!;
      expect({
        method: http.method,
        code: http.code,
        trace_id: http.trace_id,
        span_id: http.span_id,
      }).toEqual({
        method: "GET /v1/models",
        code: 200,
        ...ids("GET /v1/models"),
      });
    } finally {
      await s.stop();
    }
  }, 120_000);
});
