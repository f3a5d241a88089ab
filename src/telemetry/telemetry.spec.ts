import { metrics } from "@opentelemetry/api";
import {
  AggregationTemporality,
  MeterProvider,
  MetricReader,
  type MetricData,
} from "@opentelemetry/sdk-metrics";
import type { EngineStats } from "../engine-ipc";
import { Telemetry } from "./telemetry";

/**
 * A metric reader the test collects from on demand, with delta temporality: under cumulative temporality
 * (the exporters' default) the SDK repeats a gauge's last value in collections that observed nothing,
 * which would hide what each collection observed.
 */
class PullReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.DELTA });
  }
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

const ENGINE_METRICS = [
  "kvpark.engine.memory.rss",
  "kvpark.engine.memory.limit",
  "kvpark.engine.memory.reserved",
  "kvpark.engine.sequences",
  "kvpark.engine.decode.batch_size",
];

describe("Telemetry.observeEngine", () => {
  const reader = new PullReader();
  const provider = new MeterProvider({ readers: [reader] });
  const engine: { engineStats?: EngineStats } = {};

  beforeAll(() => {
    metrics.setGlobalMeterProvider(provider);
    const telemetry = new Telemetry({
      recordContent: false,
      tracing: false,
      metrics: true,
      shutdown: async () => undefined,
    });
    telemetry.observeEngine(engine);
  });
  afterAll(async () => {
    await provider.shutdown();
    metrics.disable();
  });

  /** The engine's metrics of one collection: name -> unit and points (attributes joined -> value). */
  async function collect(): Promise<Record<string, { unit: string; points: Record<string, number> }>> {
    const { resourceMetrics, errors } = await reader.collect();
    expect(errors).toEqual([]);
    const all: MetricData[] = resourceMetrics.scopeMetrics.flatMap((sm) => sm.metrics);
    return Object.fromEntries(
      all
        .filter((m) => ENGINE_METRICS.includes(m.descriptor.name))
        .map((m) => [
          m.descriptor.name,
          {
            unit: m.descriptor.unit,
            points: Object.fromEntries(
              m.dataPoints.map((p) => [Object.values(p.attributes).join(","), p.value as number]),
            ),
          },
        ]),
    );
  }

  it("observes nothing before the engine's first report", async () => {
    const got = await collect();
    for (const name of ENGINE_METRICS) expect([name, got[name]?.points ?? {}]).toEqual([name, {}]);
  });

  it("observes the last report as it is, without asking the engine", async () => {
    engine.engineStats = {
      rssBytes: 1_234_567_890,
      memoryMaxBytes: 4_000_000_000,
      memoryReservedBytes: 3_100_000_000,
      sequencesRunning: 8,
      sequencesWaiting: 3,
      decodeBatch: 7,
      steps: 42,
    };
    expect(await collect()).toEqual({
      "kvpark.engine.memory.rss": { unit: "By", points: { "": 1_234_567_890 } },
      "kvpark.engine.memory.limit": { unit: "By", points: { "": 4_000_000_000 } },
      "kvpark.engine.memory.reserved": { unit: "By", points: { "": 3_100_000_000 } },
      "kvpark.engine.sequences": { unit: "{sequence}", points: { running: 8, waiting: 3 } },
      "kvpark.engine.decode.batch_size": { unit: "{sequence}", points: { "": 7 } },
    });
    engine.engineStats = { ...engine.engineStats, rssBytes: 1_300_000_000, decodeBatch: 16 };
    const got = await collect();
    expect(got["kvpark.engine.memory.rss"].points).toEqual({ "": 1_300_000_000 });
    expect(got["kvpark.engine.decode.batch_size"].points).toEqual({ "": 16 });
  });

  it("attributes sequences by state under kvpark.engine.sequence.state", async () => {
    const { resourceMetrics } = await reader.collect();
    const m = resourceMetrics.scopeMetrics
      .flatMap((sm) => sm.metrics)
      .find((x) => x.descriptor.name === "kvpark.engine.sequences")!;
    expect(m.dataPoints.map((p) => p.attributes)).toEqual([
      { "kvpark.engine.sequence.state": "running" },
      { "kvpark.engine.sequence.state": "waiting" },
    ]);
  });

  it("observes nothing once the report is cleared (the engine exited)", async () => {
    engine.engineStats = undefined;
    const got = await collect();
    for (const name of ENGINE_METRICS) expect([name, got[name]?.points ?? {}]).toEqual([name, {}]);
  });
});
