import * as fs from "node:fs";
import * as path from "node:path";
import { diag, DiagLogLevel, type DiagLogger } from "@opentelemetry/api";
import type { MetricReader } from "@opentelemetry/sdk-metrics";
import type { SpanProcessor } from "@opentelemetry/sdk-trace-base";
import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import * as sc from "./semconv.js";
import { Telemetry } from "./telemetry.js";

/** Which signals go where, decided from the options and the standard OTEL_* variables. */
export interface TelemetryPlan {
  /** Traces follow OTEL_TRACES_EXPORTER (default otlp) and the OTLP trace variables. */
  traces: boolean;
  /** Metric exporters from OTEL_METRICS_EXPORTER: otlp, console, prometheus. */
  metricExporters: string[];
  /** Port of kvpark's own Prometheus endpoint (0: none). */
  prometheusPort: number;
}

function list(value: string | undefined): string[] | undefined {
  if (value === undefined || value.trim() === "") return undefined;
  return [
    ...new Set(
      value
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  ];
}

/**
 * Telemetry costs nothing unless something asks for it: with --telemetry=auto a signal is exported only
 * when its exporter or an OTLP endpoint is named in the environment, so a server started without any
 * OTEL_* variable never tries to reach a collector that is not there. --telemetry=on applies the
 * specification's defaults (OTLP over http/protobuf to localhost:4318) to both signals.
 */
export function telemetryPlan(config: Config, env: NodeJS.ProcessEnv): TelemetryPlan {
  const off: TelemetryPlan = { traces: false, metricExporters: [], prometheusPort: 0 };
  if (config.telemetry === "off" || ["true", "1"].includes((env.OTEL_SDK_DISABLED ?? "").toLowerCase()))
    return off;
  const on = config.telemetry === "on";
  const endpoint = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  const traceExporters =
    list(env.OTEL_TRACES_EXPORTER) ??
    (on || endpoint || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ? ["otlp"] : []);
  const metricExporters =
    list(env.OTEL_METRICS_EXPORTER) ??
    (on || endpoint || env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT ? ["otlp"] : []);
  return {
    traces: traceExporters.length > 0 && !traceExporters.includes("none"),
    metricExporters: metricExporters.includes("none") ? [] : metricExporters,
    prometheusPort: config.metricsPort,
  };
}

/** What tests (and embedders) may put in place of the exporters the environment names. */
export interface TelemetryOverrides {
  spanProcessors?: SpanProcessor[];
  metricReaders?: MetricReader[];
}

function number(value: string | undefined, fallback: number): number {
  const n = Number(value);
  return value !== undefined && value !== "" && Number.isFinite(n) && n >= 0 ? n : fallback;
}

async function metricReaders(plan: TelemetryPlan, config: Config, env: NodeJS.ProcessEnv) {
  const readers: MetricReader[] = [];
  const { PeriodicExportingMetricReader, ConsoleMetricExporter } = await import("@opentelemetry/sdk-metrics");
  const intervalMs = number(env.OTEL_METRIC_EXPORT_INTERVAL, 60000);
  const periodic = (exporter: ConstructorParameters<typeof PeriodicExportingMetricReader>[0]["exporter"]) =>
    new PeriodicExportingMetricReader({
      exporter,
      exportIntervalMillis: intervalMs,
      exportTimeoutMillis: Math.min(number(env.OTEL_METRIC_EXPORT_TIMEOUT, 30000), intervalMs),
    });
  for (const name of plan.metricExporters) {
    if (name === "otlp") {
      // The exporters read endpoint, headers, timeout, compression and temporality from OTEL_* themselves.
      const protocol =
        (env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? "").trim() ||
        "http/protobuf";
      if (protocol === "grpc") {
        const { OTLPMetricExporter } = await import("@opentelemetry/exporter-metrics-otlp-grpc");
        readers.push(periodic(new OTLPMetricExporter()));
      } else if (protocol === "http/json") {
        const { OTLPMetricExporter } = await import("@opentelemetry/exporter-metrics-otlp-http");
        readers.push(periodic(new OTLPMetricExporter()));
      } else {
        const { OTLPMetricExporter } = await import("@opentelemetry/exporter-metrics-otlp-proto");
        readers.push(periodic(new OTLPMetricExporter()));
      }
    } else if (name === "console") {
      readers.push(periodic(new ConsoleMetricExporter()));
    } else if (name === "prometheus" && plan.prometheusPort === 0) {
      // The standard variable asks for the exporter's own defaults (OTEL_EXPORTER_PROMETHEUS_HOST/PORT).
      const { PrometheusExporter } = await import("@opentelemetry/exporter-prometheus");
      readers.push(new PrometheusExporter());
    }
  }
  if (plan.prometheusPort > 0) {
    const { PrometheusExporter } = await import("@opentelemetry/exporter-prometheus");
    readers.push(
      new PrometheusExporter({ host: config.metricsHost || config.host, port: plan.prometheusPort }),
    );
  }
  return readers;
}

/** How long the log stays quiet about telemetry failures after one it reported. */
export const TELEMETRY_FAILURE_QUIET_MS = 5 * 60_000;

/**
 * Failures of the SDK and its exporters (a collector that is down or refuses), logged at warn: the first
 * of each kind at once, then at most one line per TELEMETRY_FAILURE_QUIET_MS counting what was held
 * back. An unreachable collector fails every export, every few seconds, and a line for each would bury
 * the log; it is an operating condition, not the server's fault, so never error-level.
 */
export class TelemetryFailureLog {
  private readonly kinds = new Map<string, { quietUntil: number; suppressed: number }>();

  constructor(
    private readonly log: Logger,
    private readonly quietMs = TELEMETRY_FAILURE_QUIET_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Reports a failure; `kind` groups the ones rate-limited together (default: the message). */
  failed(message: string, detail?: unknown, kind = message.slice(0, 80)): void {
    const t = this.now();
    const k = this.kinds.get(kind) ?? { quietUntil: 0, suppressed: 0 };
    this.kinds.set(kind, k);
    if (t < k.quietUntil) {
      k.suppressed++;
      return;
    }
    const held = k.suppressed;
    k.suppressed = 0;
    k.quietUntil = t + this.quietMs;
    this.log.warn(
      {
        event: "otel",
        detail: detail instanceof Error ? detail.message : detail,
        suppressed: held || undefined,
      },
      held > 0
        ? `${message} (${held} more since the last report)`
        : `${message} (repeats are reported at most every ${this.quietMs / 1000} s)`,
    );
  }
}

/** The SDK's own diagnostics go to kvpark's log; its errors and warnings through the failure log. */
function diagToLog(log: Logger, failures: TelemetryFailureLog): DiagLogger {
  const child = log.child({ event: "otel" });
  const text = (msg: string, args: unknown[]) =>
    [msg, ...args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : ""))]
      .filter(Boolean)
      .join(" ")
      .slice(0, 500);
  return {
    error: (msg, ...args) => failures.failed(text(msg, args)),
    warn: (msg, ...args) => failures.failed(text(msg, args)),
    info: (msg, ...args) => child.info({ args }, msg),
    debug: (msg, ...args) => child.debug({ args }, msg),
    verbose: (msg, ...args) => child.trace({ args }, msg),
  };
}

/**
 * Starts the OpenTelemetry Node SDK when the plan (or an override) asks for any signal, and returns the
 * Telemetry the server wires into its interceptors and handlers; undefined when telemetry is off, in
 * which case the SDK is never even loaded.
 */
export async function startTelemetry(
  config: Config,
  log: Logger,
  overrides: TelemetryOverrides = {},
  env: NodeJS.ProcessEnv = process.env,
): Promise<Telemetry | undefined> {
  const plan = telemetryPlan(config, env);
  const overridden = overrides.spanProcessors !== undefined || overrides.metricReaders !== undefined;
  if (!overridden && !plan.traces && plan.metricExporters.length === 0 && plan.prometheusPort === 0)
    return undefined;
  const failures = new TelemetryFailureLog(log);
  if (!env.OTEL_LOG_LEVEL) diag.setLogger(diagToLog(log, failures), DiagLogLevel.WARN);
  // Failed exports reach the global error handler, whose default logs each one through diag.error.
  const { setGlobalErrorHandler } = await import("@opentelemetry/core");
  setGlobalErrorHandler((err) => failures.failed("telemetry export failed", err, "export"));
  const { NodeSDK } = await import("@opentelemetry/sdk-node");
  const { RuntimeNodeInstrumentation } = await import("@opentelemetry/instrumentation-runtime-node");
  const { HostMetricsInstrumentation } = await import("@opentelemetry/instrumentation-host-metrics");
  const { defaultResource, resourceFromAttributes } = await import("@opentelemetry/resources");
  const readers = overrides.metricReaders ?? (await metricReaders(plan, config, env));
  const metricsOn = readers.length > 0;
  const sdk = new NodeSDK({
    // service.name and service.version are defaults: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
    // read by the environment detector, override them.
    resource: defaultResource().merge(
      resourceFromAttributes({
        [sc.ATTR_SERVICE_NAME]: "kvpark",
        [sc.ATTR_SERVICE_VERSION]: packageVersion(),
      }),
    ),
    // Undefined lets the SDK build span processors from OTEL_TRACES_EXPORTER and the OTLP variables.
    spanProcessors: overrides.spanProcessors ?? (plan.traces ? undefined : []),
    metricReaders: readers,
    // kvpark logs JSON to stdout; an OTLP log pipeline would only add a second, idle exporter.
    logRecordProcessors: [],
    // The front end's process and runtime metrics: CPU time and memory of the process (the system-wide
    // groups are left out: a container's host is not kvpark's to report) and V8 heap, event-loop delay
    // and utilization. The engine reports its own in EngineStats. No auto-instrumentation: kvpark
    // traces its calls itself.
    instrumentations: metricsOn
      ? [
          new HostMetricsInstrumentation({ metricGroups: ["process.cpu", "process.memory"] }),
          new RuntimeNodeInstrumentation({ monitoringPrecision: 20 }),
        ]
      : [],
  });
  sdk.start();
  const tracing = overrides.spanProcessors ? overrides.spanProcessors.length > 0 : plan.traces;
  log.info(
    {
      event: "telemetry",
      traces: tracing,
      metrics: overrides.metricReaders ? ["custom"] : plan.metricExporters,
      prometheusPort: plan.prometheusPort || undefined,
      recordContent: config.telemetryRecordContent,
    },
    "telemetry on",
  );
  return new Telemetry({
    recordContent: config.telemetryRecordContent,
    tracing,
    metrics: metricsOn,
    shutdown: () => sdk.shutdown(),
  });
}

/** kvpark's version, from package.json (two levels up from src/, three from dist/src/). */
function packageVersion(): string {
  for (const up of ["../..", "../../.."]) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, up, "package.json"), "utf8"));
      if (pkg.name === "kvpark") return pkg.version;
    } catch {
      // not at this level
    }
  }
  return "unknown";
}
