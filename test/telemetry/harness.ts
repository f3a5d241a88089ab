import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { context, metrics, propagation, trace } from "@opentelemetry/api";
import { MetricReader, type ResourceMetrics } from "@opentelemetry/sdk-metrics";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { loadConfig } from "../../src/config";
import { createLogger, type Logger } from "../../src/log";
import { frontEnd } from "../../src/frontend/serve";
import { listen } from "../../src/frontend/server";
import { startTelemetry } from "../../src/telemetry";
import { testModel } from "../helpers/server";

/** A metric reader the test collects from on demand. */
class PullReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

/**
 * kvpark's front end in the test process, wired as `serve` wires it but with the SDK's in-memory span
 * exporter and a pull metric reader in place of the OTLP exporters; the engine is the real child process.
 */
export interface InProcessServer {
  dataDir: string;
  spans: InMemorySpanExporter;
  url: string;
  clients: {
    inference: ReturnType<typeof createClient<typeof InferenceService>>;
    kv: ReturnType<typeof createClient<typeof KVBlocksService>>;
  };
  collect(): Promise<ResourceMetrics>;
  finishedSpans(): ReadableSpan[];
  stop(): Promise<void>;
}

export async function startInProcess(
  opts: { args?: string[]; dataDir?: string; log?: Logger } = {},
): Promise<InProcessServer> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-tel-"));
  const config = loadConfig(
    ["--port", "0", "--data-dir", dataDir, "--model", testModel(), ...(opts.args ?? [])],
    {},
  );
  const log = opts.log ?? createLogger("silent");
  const spans = new InMemorySpanExporter();
  const reader = new PullReader();
  const telemetry = await startTelemetry(
    config,
    log,
    { spanProcessors: [new SimpleSpanProcessor(spans)], metricReaders: [reader] },
    {},
  );
  const { engine, deps } = frontEnd(config, log, telemetry);
  const server = await listen(config, deps);
  engine.start();
  await engine.ready();
  const url = `http://127.0.0.1:${server.port}`;
  const transport = createGrpcTransport({ baseUrl: url });
  return {
    dataDir,
    spans,
    url,
    clients: {
      inference: createClient(InferenceService, transport),
      kv: createClient(KVBlocksService, transport),
    },
    async collect() {
      const { resourceMetrics, errors } = await reader.collect();
      if (errors.length) throw errors[0];
      return resourceMetrics;
    },
    finishedSpans: () => spans.getFinishedSpans(),
    async stop() {
      await server.shutdown(1000);
      await engine.stop();
      await telemetry!.shutdown();
      // The SDK registered itself globally; a server started after this one registers afresh.
      trace.disable();
      metrics.disable();
      propagation.disable();
      context.disable();
    },
  };
}
