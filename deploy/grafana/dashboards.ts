// Source of the dashboards in deploy/grafana/dashboards/*.json, typed against Grafana's dashboard schema
// (@grafana/schema) and built from the names in src/telemetry/semconv.ts, so a renamed attribute or
// metric cannot leave a stale query behind. `npm run dashboards` rewrites the JSON files;
// test/deploy/grafana.spec.ts fails when they differ from this file.
import type { DataSourceRef, Dashboard, Panel } from "@grafana/schema";
import * as sc from "../../src/telemetry/semconv";

const PROMETHEUS: DataSourceRef = { type: "prometheus", uid: "prometheus" };
const TEMPO: DataSourceRef = { type: "tempo", uid: "tempo" };

/** A metric or attribute name as Prometheus labels and names spell it. */
const prom = (name: string) => name.replace(/\./g, "_");

/**
 * A PromQL selector for an OpenTelemetry metric. The Collector's Prometheus exporter appends the unit
 * (gen_ai_server_time_to_first_token_seconds_bucket) and kvpark's own --metrics-port endpoint does not
 * (gen_ai_server_time_to_first_token_bucket); matching both keeps one dashboard for either path.
 */
function series(name: string, unitSuffix: string, part: string, matchers = ""): string {
  const suffix = unitSuffix ? `(_${unitSuffix})?` : "";
  return `{__name__=~"${prom(name)}${suffix}${part}"${matchers ? `, ${matchers}` : ""}}`;
}

const MODEL = prom(sc.ATTR_GEN_AI_REQUEST_MODEL);

function quantile(q: number, name: string, unitSuffix: string, by: string, matchers = ""): string {
  return `histogram_quantile(${q}, sum by (le, ${by}) (rate(${series(name, unitSuffix, "_bucket", matchers)}[$__rate_interval])))`;
}

type Target = { refId: string; datasource: DataSourceRef } & Record<string, unknown>;

const promTarget = (refId: string, expr: string, legendFormat: string): Target => ({
  refId,
  datasource: PROMETHEUS,
  expr,
  legendFormat,
  range: true,
});

/** A TraceQL search: its results list traces (or spans), each linking to its trace view. */
const traceSearch = (refId: string, query: string, tableType: "traces" | "spans", limit = 50): Target => ({
  refId,
  datasource: TEMPO,
  queryType: "traceql",
  query,
  tableType,
  limit,
});

/** A TraceQL metrics query (Tempo's metrics from traces). */
const traceMetrics = (refId: string, query: string): Target => ({
  refId,
  datasource: TEMPO,
  queryType: "traceql",
  query,
  metricsQueryType: "range",
});

interface PanelSpec {
  title: string;
  description: string;
  type: "timeseries" | "table" | "stat";
  targets: Target[];
  unit?: string;
  w?: number;
  h?: number;
  links?: { title: string; url: string }[];
  stack?: boolean;
}

/** Lays panels out left to right in rows of 24 grid units. */
function layout(specs: PanelSpec[]): Panel[] {
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  return specs.map((s, i) => {
    const w = s.w ?? 12;
    const h = s.h ?? 8;
    if (x + w > 24) {
      x = 0;
      y += rowHeight;
      rowHeight = 0;
    }
    const panel: Panel = {
      id: i + 1,
      type: s.type,
      title: s.title,
      description: s.description,
      datasource: s.targets[0].datasource,
      gridPos: { x, y, w, h },
      targets: s.targets,
      fieldConfig: {
        defaults: {
          unit: s.unit ?? "short",
          links: s.links ?? [],
          ...(s.stack ? { custom: { stacking: { mode: "normal", group: "A" }, fillOpacity: 30 } } : {}),
        },
        overrides: [],
      },
      options:
        s.type === "timeseries"
          ? { legend: { displayMode: "table", placement: "bottom", calcs: ["mean", "max"] } }
          : {},
    };
    x += w;
    rowHeight = Math.max(rowHeight, h);
    return panel;
  });
}

function dashboard(
  uid: string,
  title: string,
  description: string,
  panels: PanelSpec[],
  templating: Dashboard["templating"] = { list: [] },
): Dashboard {
  return {
    uid,
    title,
    description,
    tags: ["kvpark"],
    editable: true,
    schemaVersion: 39,
    version: 1,
    refresh: "30s",
    time: { from: "now-1h", to: "now" },
    timezone: "browser",
    links: [
      {
        title: "kvpark",
        type: "dashboards",
        tags: ["kvpark"],
        asDropdown: false,
        icon: "external link",
        includeVars: false,
        keepTime: true,
        targetBlank: false,
        tooltip: "",
        url: "",
      },
    ],
    templating,
    panels: layout(panels),
  };
}

const TTFT = sc.METRIC_GEN_AI_SERVER_TIME_TO_FIRST_TOKEN;
const RPC = sc.METRIC_RPC_SERVER_CALL_DURATION;
const SOURCE = prom(sc.ATTR_KVPARK_CACHE_SOURCE);
const TIER = prom(sc.ATTR_KVPARK_CACHE_TIER);
const RESTORE_TIER = prom(sc.ATTR_KVPARK_RESTORE_TIER);
const SHARED_DIRECTION = prom(sc.ATTR_KVPARK_CACHE_SHARED_DIRECTION);
const ERROR_TYPE = prom(sc.ATTR_ERROR_TYPE);
const ENGINE_STATE = prom(sc.ATTR_KVPARK_ENGINE_SEQUENCE_STATE);

/** Opens the trace dashboard on the same time range and model, listing requests slower than the threshold. */
const slowTracesLink = {
  title: "Slow requests of ${__field.labels." + MODEL + "} (traces)",
  url: "/d/kvpark-traces/kvpark-traces?${__url_time_range}&var-model=${__field.labels." + MODEL + "}",
};

const requests = dashboard(
  "kvpark-requests",
  "kvpark: requests",
  "Latency, throughput and errors of kvpark's generation requests, from the gen_ai.server.* and rpc.server.* metrics, and the engine's memory and batching (kvpark.engine.*).",
  [
    {
      title: "Time to first token by model (p50, p95, p99)",
      description:
        "Quantiles of gen_ai.server.time_to_first_token: arrival to first generated token. Click a series for that model's slow requests in Tempo.",
      type: "timeseries",
      unit: "s",
      targets: [0.5, 0.95, 0.99].map((q, i) =>
        promTarget(
          String.fromCharCode(65 + i),
          quantile(q, TTFT, "seconds", MODEL),
          `p${Math.round(q * 100)} {{${MODEL}}}`,
        ),
      ),
      links: [slowTracesLink],
    },
    {
      title: "Time per output token by model (p50, p95)",
      description: "Quantiles of gen_ai.server.time_per_output_token: decode time per token after the first.",
      type: "timeseries",
      unit: "s",
      targets: [0.5, 0.95].map((q, i) =>
        promTarget(
          String.fromCharCode(65 + i),
          quantile(q, sc.METRIC_GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, "seconds", MODEL),
          `p${Math.round(q * 100)} {{${MODEL}}}`,
        ),
      ),
    },
    {
      title: "Request duration by model (p50, p95)",
      description:
        "Quantiles of gen_ai.server.request.duration: arrival to last token, or to failure (error.type set).",
      type: "timeseries",
      unit: "s",
      targets: [0.5, 0.95].map((q, i) =>
        promTarget(
          String.fromCharCode(65 + i),
          quantile(q, sc.METRIC_GEN_AI_SERVER_REQUEST_DURATION, "seconds", MODEL),
          `p${Math.round(q * 100)} {{${MODEL}}}`,
        ),
      ),
      links: [slowTracesLink],
    },
    {
      title: "Calls per second by method and status",
      description:
        "Rate of rpc.server.call.duration observations: every RPC, by method and gRPC status code (0 is OK).",
      type: "timeseries",
      unit: "reqps",
      targets: [
        promTarget(
          "A",
          `sum by (rpc_method, rpc_grpc_status_code) (rate(${series(RPC, "seconds", "_count")}[$__rate_interval]))`,
          "{{rpc_method}} {{rpc_grpc_status_code}}",
        ),
      ],
    },
    {
      title: "Error ratio",
      description: "Share of RPCs that ended with a status other than OK, by method.",
      type: "timeseries",
      unit: "percentunit",
      targets: [
        promTarget(
          "A",
          `sum by (rpc_method) (rate(${series(RPC, "seconds", "_count", 'rpc_grpc_status_code!="0"')}[$__rate_interval])) / sum by (rpc_method) (rate(${series(RPC, "seconds", "_count")}[$__rate_interval]))`,
          "{{rpc_method}}",
        ),
      ],
    },
    {
      title: "Tokens per second (input, output)",
      description: "Rate of the summed kvpark.token.usage histogram by gen_ai.token.type.",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget(
          "A",
          `sum by (gen_ai_token_type) (rate(${series(sc.METRIC_KVPARK_TOKEN_USAGE, "", "_sum")}[$__rate_interval]))`,
          "{{gen_ai_token_type}}",
        ),
      ],
    },
    {
      title: "Engine memory against its bound",
      description:
        "The engine's last report: kvpark.engine.memory.rss (resident memory of the engine process), kvpark.engine.memory.reserved (what admission counts as taken: weights, RAM tier budget, running sequences) and kvpark.engine.memory.limit (the bound; work beyond it waits).",
      type: "timeseries",
      unit: "bytes",
      targets: [
        promTarget("A", `sum(${series(sc.METRIC_KVPARK_ENGINE_MEMORY_RSS, "bytes", "")})`, "RSS"),
        promTarget("B", `sum(${series(sc.METRIC_KVPARK_ENGINE_MEMORY_RESERVED, "bytes", "")})`, "reserved"),
        promTarget("C", `sum(${series(sc.METRIC_KVPARK_ENGINE_MEMORY_LIMIT, "bytes", "")})`, "bound"),
      ],
    },
    {
      title: "Engine sequences and decode batch",
      description:
        "kvpark.engine.sequences by state (running: admitted; waiting: held back for memory) and kvpark.engine.decode.batch_size (sequences in the latest batched decode step).",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget(
          "A",
          `sum by (${ENGINE_STATE}) (${prom(sc.METRIC_KVPARK_ENGINE_SEQUENCES)})`,
          `{{${ENGINE_STATE}}}`,
        ),
        promTarget("B", `sum(${prom(sc.METRIC_KVPARK_ENGINE_DECODE_BATCH_SIZE)})`, "decode batch"),
      ],
    },
    {
      title: "Process memory: front end and engine",
      description:
        "The front end's process.memory.usage (resident memory) and v8js.memory.heap.used, and the engine's kvpark.engine.memory.rss, kvpark.engine.heap.used and kvpark.engine.memory.kept. The engine's RSS far above its heap is MLX's native memory (weights, KV); kept is the part of it that is freed pages jemalloc keeps for reuse (see --engine-kept-bytes-max).",
      type: "timeseries",
      unit: "bytes",
      targets: [
        promTarget("A", `sum(${series(sc.METRIC_PROCESS_MEMORY_USAGE, "bytes", "")})`, "front end RSS"),
        promTarget("B", `sum(${series(sc.METRIC_V8JS_MEMORY_HEAP_USED, "bytes", "")})`, "front end heap"),
        promTarget("C", `sum(${series(sc.METRIC_KVPARK_ENGINE_MEMORY_RSS, "bytes", "")})`, "engine RSS"),
        promTarget("D", `sum(${series(sc.METRIC_KVPARK_ENGINE_HEAP_USED, "bytes", "")})`, "engine heap"),
        promTarget(
          "E",
          `sum(${series(sc.METRIC_KVPARK_ENGINE_MEMORY_KEPT, "bytes", "")})`,
          "engine kept pages",
        ),
      ],
    },
    {
      title: "Event-loop delay (p99) and front-end CPU",
      description:
        "nodejs.eventloop.delay.p99 of the front end (a slow tokenizer or JSON work shows here) and kvpark.engine.eventloop.delay (p99) of the engine (a long synchronous MLX step); CPU seconds per second of the front end (process.cpu.time).",
      type: "timeseries",
      unit: "s",
      targets: [
        promTarget(
          "A",
          `max(${series(sc.METRIC_NODEJS_EVENTLOOP_DELAY_P99, "seconds", "")})`,
          "front end p99",
        ),
        promTarget(
          "B",
          `max(${series(sc.METRIC_KVPARK_ENGINE_EVENTLOOP_DELAY, "seconds", "", `${prom(sc.ATTR_KVPARK_ENGINE_EVENTLOOP_STAT)}="p99"`)})`,
          "engine p99",
        ),
        promTarget(
          "C",
          `sum(rate(${series(sc.METRIC_PROCESS_CPU_TIME, "seconds", "_total")}[$__rate_interval]))`,
          "front end CPU",
        ),
      ],
    },
  ],
);

const cache = dashboard(
  "kvpark-cache",
  "kvpark: KV cache",
  "Where prompt tokens' KV comes from, what restoring it costs, and the health of the RAM and SSD tiers.",
  [
    {
      title: "Prompt tokens by source (reuse by tier)",
      description:
        "Rate of kvpark.cache.prompt_tokens by kvpark.cache.source: ram, ssd and shared (Redis) are reused, computed went through prefill.",
      type: "timeseries",
      unit: "short",
      stack: true,
      targets: [
        promTarget(
          "A",
          `sum by (${SOURCE}) (rate(${prom(sc.METRIC_KVPARK_CACHE_PROMPT_TOKENS)}_total[$__rate_interval]))`,
          `{{${SOURCE}}}`,
        ),
      ],
    },
    {
      title: "Hit ratio",
      description:
        "Reused prompt tokens (ram + ssd + shared) over all prompt tokens in the window, and kvpark.cache.hit_ratio since each server started.",
      type: "timeseries",
      unit: "percentunit",
      targets: [
        promTarget(
          "A",
          `sum(rate(${prom(sc.METRIC_KVPARK_CACHE_PROMPT_TOKENS)}_total{${SOURCE}=~"ram|ssd|shared"}[$__rate_interval])) / sum(rate(${prom(sc.METRIC_KVPARK_CACHE_PROMPT_TOKENS)}_total[$__rate_interval]))`,
          "window",
        ),
        promTarget("B", `avg(${series(sc.METRIC_KVPARK_CACHE_HIT_RATIO, "ratio", "")})`, "since start"),
      ],
    },
    {
      title: "Restore latency by tier (p50, p95)",
      description: "Quantiles of kvpark.cache.restore.duration by kvpark.restore.tier (ram, ssd, mixed).",
      type: "timeseries",
      unit: "s",
      targets: [0.5, 0.95].map((q, i) =>
        promTarget(
          String.fromCharCode(65 + i),
          quantile(q, sc.METRIC_KVPARK_CACHE_RESTORE_DURATION, "seconds", RESTORE_TIER),
          `p${Math.round(q * 100)} {{${RESTORE_TIER}}}`,
        ),
      ),
    },
    {
      title: "SSD restore size and throughput (p50)",
      description:
        "Median bytes read from SSD per restore (kvpark.cache.restore.ssd_size) and median restore throughput (kvpark.cache.restore.throughput).",
      type: "timeseries",
      unit: "bytes",
      targets: [
        promTarget(
          "A",
          quantile(0.5, sc.METRIC_KVPARK_CACHE_RESTORE_SSD_SIZE, "bytes", RESTORE_TIER),
          "bytes {{" + RESTORE_TIER + "}}",
        ),
        promTarget(
          "B",
          quantile(0.5, sc.METRIC_KVPARK_CACHE_RESTORE_THROUGHPUT, "bytes_per_second", RESTORE_TIER),
          "bytes/s {{" + RESTORE_TIER + "}}",
        ),
      ],
    },
    {
      title: "Restore vs recompute decisions",
      description:
        "Rate of kvpark.cache.decisions: restore (cached prefix restored), resident (the engine's last sequence taken over without a copy), recompute (the cost model found recomputing SSD blocks faster), none (nothing cached).",
      type: "timeseries",
      unit: "reqps",
      stack: true,
      targets: [
        promTarget(
          "A",
          `sum by (${prom(sc.ATTR_KVPARK_CACHE_DECISION)}) (rate(${prom(sc.METRIC_KVPARK_CACHE_DECISIONS)}_total[$__rate_interval]))`,
          `{{${prom(sc.ATTR_KVPARK_CACHE_DECISION)}}}`,
        ),
      ],
    },
    {
      title: "Bytes and budget by tier",
      description:
        "kvpark.cache.size (bytes held) and kvpark.cache.size_limit (budget) of the RAM and SSD tiers.",
      type: "timeseries",
      unit: "bytes",
      targets: [
        promTarget(
          "A",
          `sum by (${TIER}) (${series(sc.METRIC_KVPARK_CACHE_SIZE, "bytes", "")})`,
          `held {{${TIER}}}`,
        ),
        promTarget(
          "B",
          `sum by (${TIER}) (${series(sc.METRIC_KVPARK_CACHE_SIZE_LIMIT, "bytes", "")})`,
          `budget {{${TIER}}}`,
        ),
      ],
    },
    {
      title: "Blocks by tier",
      description: "kvpark.cache.blocks and kvpark.cache.pinned_blocks of each tier.",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget("A", `sum by (${TIER}) (${prom(sc.METRIC_KVPARK_CACHE_BLOCKS)})`, `blocks {{${TIER}}}`),
        promTarget(
          "B",
          `sum by (${TIER}) (${prom(sc.METRIC_KVPARK_CACHE_PINNED_BLOCKS)})`,
          `pinned {{${TIER}}}`,
        ),
      ],
    },
    {
      title: "Block hits, misses and evictions per second",
      description:
        "Rates of kvpark.cache.block.hits, kvpark.cache.block.misses and kvpark.cache.evictions by tier.",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget(
          "A",
          `sum by (${TIER}) (rate(${prom(sc.METRIC_KVPARK_CACHE_BLOCK_HITS)}_total[$__rate_interval]))`,
          `hits {{${TIER}}}`,
        ),
        promTarget(
          "B",
          `sum by (${TIER}) (rate(${prom(sc.METRIC_KVPARK_CACHE_BLOCK_MISSES)}_total[$__rate_interval]))`,
          `misses {{${TIER}}}`,
        ),
        promTarget(
          "C",
          `sum by (${TIER}) (rate(${prom(sc.METRIC_KVPARK_CACHE_EVICTIONS)}_total[$__rate_interval]))`,
          `evictions {{${TIER}}}`,
        ),
      ],
    },
    {
      title: "Corruptions, write errors and skipped writes",
      description:
        "Increase of kvpark.cache.corrupt_blocks (failed verification), kvpark.cache.write.errors and kvpark.cache.write.skips (queue full). Anything above zero deserves a look.",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget(
          "A",
          `sum(increase(${prom(sc.METRIC_KVPARK_CACHE_CORRUPT_BLOCKS)}_total[$__rate_interval]))`,
          "corrupt blocks",
        ),
        promTarget(
          "B",
          `sum(increase(${prom(sc.METRIC_KVPARK_CACHE_WRITE_ERRORS)}_total[$__rate_interval]))`,
          "write errors",
        ),
        promTarget(
          "C",
          `sum(increase(${prom(sc.METRIC_KVPARK_CACHE_WRITE_SKIPS)}_total[$__rate_interval]))`,
          "skipped writes",
        ),
      ],
    },
    {
      title: "SSD write queue",
      description:
        "kvpark.cache.write_queue.depth (blocks) and kvpark.cache.write_queue.size (bytes) waiting for the SSD.",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget("A", `sum(${prom(sc.METRIC_KVPARK_CACHE_WRITE_QUEUE_DEPTH)})`, "blocks"),
        promTarget("B", `sum(${series(sc.METRIC_KVPARK_CACHE_WRITE_QUEUE_SIZE, "bytes", "")})`, "bytes"),
      ],
    },
    {
      title: "Shared tier: hits, misses and connection",
      description:
        "Rates of kvpark.cache.shared.hits (blocks lookups found in Redis) and kvpark.cache.shared.misses (lookups that found nothing more there), and the nodes connected to Redis (kvpark.cache.shared.connected).",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget(
          "A",
          `sum(rate(${prom(sc.METRIC_KVPARK_CACHE_SHARED_HITS)}_total[$__rate_interval]))`,
          "hits",
        ),
        promTarget(
          "B",
          `sum(rate(${prom(sc.METRIC_KVPARK_CACHE_SHARED_MISSES)}_total[$__rate_interval]))`,
          "misses",
        ),
        promTarget(
          "C",
          `sum(${series(sc.METRIC_KVPARK_CACHE_SHARED_CONNECTED, "ratio", "")})`,
          "nodes connected",
        ),
      ],
    },
    {
      title: "Shared tier: bytes read and written",
      description:
        "Rate of kvpark.cache.shared.io by kvpark.cache.shared.direction: block values read back from Redis and written to it.",
      type: "timeseries",
      unit: "Bps",
      targets: [
        promTarget(
          "A",
          `sum by (${SHARED_DIRECTION}) (rate(${series(sc.METRIC_KVPARK_CACHE_SHARED_IO, "bytes", "_total")}[$__rate_interval]))`,
          `{{${SHARED_DIRECTION}}}`,
        ),
      ],
    },
    {
      title: "Shared tier: round-trip latency (mean)",
      description:
        "Mean time of a round trip to Redis: rate of kvpark.cache.shared.request.time over rate of kvpark.cache.shared.requests (a batch of commands sent together counts once), and the round trips per second.",
      type: "timeseries",
      unit: "s",
      targets: [
        promTarget(
          "A",
          `sum(rate(${series(sc.METRIC_KVPARK_CACHE_SHARED_REQUEST_TIME, "seconds", "_total")}[$__rate_interval])) / sum(rate(${prom(sc.METRIC_KVPARK_CACHE_SHARED_REQUESTS)}_total[$__rate_interval]))`,
          "mean latency",
        ),
      ],
    },
    {
      title: "Shared tier: errors, timeouts, rejected and lost blocks",
      description:
        "Increase of kvpark.cache.shared.errors by error.type (read, write, timeout: past --shared-tier-timeout-ms, rejected: failed verification, lost: gone between lookup and restore) and of kvpark.cache.shared.write.skips (queue full). Requests go on without the tier; rejected blocks deserve a look.",
      type: "timeseries",
      unit: "short",
      targets: [
        promTarget(
          "A",
          `sum by (${ERROR_TYPE}) (increase(${prom(sc.METRIC_KVPARK_CACHE_SHARED_ERRORS)}_total[$__rate_interval]))`,
          `{{${ERROR_TYPE}}}`,
        ),
        promTarget(
          "B",
          `sum(increase(${prom(sc.METRIC_KVPARK_CACHE_SHARED_WRITE_SKIPS)}_total[$__rate_interval]))`,
          "skipped writes",
        ),
      ],
    },
  ],
);

const GEN = `span.${sc.ATTR_GEN_AI_OPERATION_NAME} != nil`;
const traces = dashboard(
  "kvpark-traces",
  "kvpark: traces",
  "kvpark's requests as traces in Tempo: slow requests with links to their traces, and metrics computed from spans (TraceQL metrics and the metrics generator's span metrics).",
  [
    {
      title: "Slow requests",
      description:
        "Generation spans whose time to first token exceeded $ttft_ms ms, newest first; each row opens its trace (RPC span, generation span, lookup/restore/prefill/decode).",
      type: "table",
      w: 24,
      h: 10,
      targets: [
        traceSearch(
          "A",
          `{${GEN} && span.${sc.ATTR_GEN_AI_REQUEST_MODEL} =~ "$model" && span.${sc.ATTR_KVPARK_TTFT_MS} > $ttft_ms} | select(span.${sc.ATTR_KVPARK_TTFT_MS}, span.${sc.ATTR_GEN_AI_USAGE_INPUT_TOKENS}, span.${sc.ATTR_KVPARK_CACHE_RAM_TOKENS}, span.${sc.ATTR_KVPARK_CACHE_SSD_TOKENS}, span.${sc.ATTR_KVPARK_CACHE_DECISION})`,
          "spans",
        ),
      ],
    },
    {
      title: "Time to first token by model from traces (p50, p95, p99)",
      description: "TraceQL metrics: quantiles of the kvpark.ttft.ms attribute of generation spans.",
      type: "timeseries",
      unit: "ms",
      targets: [
        traceMetrics(
          "A",
          `{${GEN} && span.${sc.ATTR_GEN_AI_REQUEST_MODEL} =~ "$model"} | quantile_over_time(span.${sc.ATTR_KVPARK_TTFT_MS}, 0.5, 0.95, 0.99) by (span.${sc.ATTR_GEN_AI_REQUEST_MODEL})`,
        ),
      ],
    },
    {
      title: "Restore latency by tier from traces (p50, p95)",
      description:
        "TraceQL metrics: quantiles of the duration of kvpark.restore spans by kvpark.restore.tier.",
      type: "timeseries",
      unit: "s",
      targets: [
        traceMetrics(
          "A",
          `{name = "${sc.SPAN_RESTORE}"} | quantile_over_time(duration, 0.5, 0.95) by (span.${sc.ATTR_KVPARK_RESTORE_TIER})`,
        ),
      ],
    },
    {
      title: "Restore latency against bytes",
      description:
        "Restore spans that read the SSD, with the bytes read and the time taken: read down the table to see latency grow with bytes; each row opens its trace.",
      type: "table",
      targets: [
        traceSearch(
          "A",
          `{name = "${sc.SPAN_RESTORE}" && span.${sc.ATTR_KVPARK_RESTORE_SSD_BYTES} > 0} | select(span.${sc.ATTR_KVPARK_RESTORE_SSD_BYTES}, span.${sc.ATTR_KVPARK_RESTORE_MS}, span.${sc.ATTR_KVPARK_RESTORE_TIER})`,
          "spans",
          100,
        ),
      ],
    },
    {
      title: "Restore vs recompute decisions from traces",
      description: "TraceQL metrics: generation spans per second by kvpark.cache.decision.",
      type: "timeseries",
      unit: "reqps",
      stack: true,
      targets: [traceMetrics("A", `{${GEN}} | rate() by (span.${sc.ATTR_KVPARK_CACHE_DECISION})`)],
    },
    {
      title: "Errors and corruption from traces",
      description:
        "TraceQL metrics: RPC spans with a status other than OK by method, and spans that met corrupt blocks (restore verification or GetBlocks checksum).",
      type: "timeseries",
      unit: "reqps",
      targets: [
        traceMetrics(
          "A",
          `{kind = server && span.${sc.ATTR_RPC_GRPC_STATUS_CODE} != 0} | rate() by (span.${sc.ATTR_RPC_METHOD})`,
        ),
        traceMetrics(
          "B",
          `{span.${sc.ATTR_KVPARK_CACHE_CORRUPT_BLOCKS} > 0 || span.${sc.ATTR_KVPARK_BLOCKS_CORRUPT} > 0} | rate() by (name)`,
        ),
      ],
    },
    {
      title: "Phase latency (span metrics, p95)",
      description:
        "The metrics generator's span metrics (traces_spanmetrics_latency) for kvpark's phase spans: lookup, restore, prefill, decode.",
      type: "timeseries",
      unit: "s",
      targets: [
        promTarget(
          "A",
          `histogram_quantile(0.95, sum by (le, span_name) (rate(traces_spanmetrics_latency_bucket{span_name=~"kvpark\\\\..*"}[$__rate_interval])))`,
          "{{span_name}}",
        ),
      ],
    },
    {
      title: "Requests that chose recompute",
      description:
        "Generation spans where the cost model recomputed SSD-cached tokens, with the estimates it compared.",
      type: "table",
      targets: [
        traceSearch(
          "A",
          `{${GEN} && span.${sc.ATTR_KVPARK_CACHE_DECISION} = "recompute"} | select(span.${sc.ATTR_KVPARK_CACHE_RECOMPUTE_CHOSEN_TOKENS}, span.${sc.ATTR_KVPARK_RESTORE_ESTIMATED_MS}, span.${sc.ATTR_KVPARK_RECOMPUTE_ESTIMATED_MS})`,
          "spans",
        ),
      ],
    },
  ],
  {
    list: [
      {
        name: "model",
        label: "Model (regex)",
        type: "textbox",
        query: ".*",
        current: { text: ".*", value: ".*" },
        hide: 0,
      },
      {
        name: "ttft_ms",
        label: "Slow TTFT (ms)",
        type: "textbox",
        query: "1000",
        current: { text: "1000", value: "1000" },
        hide: 0,
      },
    ],
  },
);

/** The dashboards by file name under deploy/grafana/dashboards/. */
export const dashboards: Record<string, Dashboard> = {
  "kvpark-requests.json": requests,
  "kvpark-cache.json": cache,
  "kvpark-traces.json": traces,
};

/** The JSON text of a dashboard file. */
export function dashboardJson(d: Dashboard): string {
  return JSON.stringify(d, null, 2) + "\n";
}
