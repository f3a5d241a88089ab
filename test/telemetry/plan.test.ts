import * as net from "node:net";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { loadConfig } from "../../src/config";
import { createLogger } from "../../src/log";
import { startTelemetry, telemetryPlan } from "../../src/telemetry";
import { startServer } from "../helpers/server";

const config = (...args: string[]) => loadConfig(args, {});

describe("when telemetry is on", () => {
  it("is off without OTEL_* variables or options, and the SDK is never started", async () => {
    expect(telemetryPlan(config(), {})).toEqual({ traces: false, metricExporters: [], prometheusPort: 0 });
    expect(await startTelemetry(config(), createLogger("silent"), {}, {})).toBeUndefined();
  });

  it("follows the OTLP endpoint variables signal by signal", () => {
    expect(telemetryPlan(config(), { OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4317" })).toEqual({
      traces: true,
      metricExporters: ["otlp"],
      prometheusPort: 0,
    });
    expect(
      telemetryPlan(config(), { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://tempo:4318/v1/traces" }),
    ).toEqual({
      traces: true,
      metricExporters: [],
      prometheusPort: 0,
    });
    expect(
      telemetryPlan(config(), { OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "http://c:4318/v1/metrics" }),
    ).toEqual({
      traces: false,
      metricExporters: ["otlp"],
      prometheusPort: 0,
    });
  });

  it("honours the exporter lists, none, OTEL_SDK_DISABLED and --telemetry", () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317" };
    expect(telemetryPlan(config(), { ...env, OTEL_TRACES_EXPORTER: "none" }).traces).toBe(false);
    expect(
      telemetryPlan(config(), { OTEL_METRICS_EXPORTER: "otlp, prometheus,otlp" }).metricExporters,
    ).toEqual(["otlp", "prometheus"]);
    expect(telemetryPlan(config(), { ...env, OTEL_METRICS_EXPORTER: "none" }).metricExporters).toEqual([]);
    expect(telemetryPlan(config(), { ...env, OTEL_SDK_DISABLED: "true" })).toEqual({
      traces: false,
      metricExporters: [],
      prometheusPort: 0,
    });
    expect(telemetryPlan(config("--telemetry", "off"), env).traces).toBe(false);
    expect(telemetryPlan(config("--telemetry", "on"), {})).toEqual({
      traces: true,
      metricExporters: ["otlp"],
      prometheusPort: 0,
    });
    expect(telemetryPlan(config("--metrics-port", "9464"), {})).toEqual({
      traces: false,
      metricExporters: [],
      prometheusPort: 9464,
    });
  });
});

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

describe("--metrics-port", () => {
  it("serves the request metrics for Prometheus", async () => {
    const port = await freePort();
    const server = await startServer({ args: ["--metrics-port", String(port)] });
    try {
      const inference = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
      let ttftMs = 0;
      for await (const res of inference.generate({
        prompt: { kind: { case: "tokens", value: { ids: [5, 6, 7, 8, 9] } } },
        sampling: { maxTokens: 3, temperature: 0 },
      }))
        if (res.event.case === "finished") ttftMs = res.event.value.timings!.ttftMs;
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const labels =
        'gen_ai_operation_name="text_completion",gen_ai_provider_name="kvpark",' +
        'gen_ai_request_model="tiny",gen_ai_response_model="tiny",otel_scope_name="kvpark"';
      // The exporter names metrics without unit suffixes; counters end in _total.
      expect(text).toContain(`gen_ai_server_time_to_first_token_count{${labels}} 1\n`);
      expect(text).toContain(`gen_ai_server_time_to_first_token_sum{${labels}} ${ttftMs / 1000}\n`);
      expect(text).toContain(
        'kvpark_cache_prompt_tokens_total{kvpark_cache_source="computed",otel_scope_name="kvpark"} 5\n',
      );
      expect(text).toContain(
        'kvpark_cache_decisions_total{kvpark_cache_decision="none",otel_scope_name="kvpark"} 1\n',
      );
      expect(text).toMatch(/\nkvpark_cache_size\{kvpark_cache_tier="ram",otel_scope_name="kvpark"\} \d+\n/);
      expect(server.logs.find((l) => l.event === "telemetry")).toMatchObject({
        traces: false,
        metrics: [],
        prometheusPort: port,
      });
    } finally {
      await server.stop();
    }
  });
});
