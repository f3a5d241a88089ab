import type { Config } from "../config.js";
import type { ModelInfo } from "../engine-ipc.js";
import { createLogger, type Logger } from "../log.js";
import { RecentRequests } from "../console/recent-requests.js";
import { Readiness } from "../rpc/health.js";
import { startTelemetry, type Telemetry } from "../telemetry/index.js";
import { Admission } from "./admission.js";
import { EngineClient } from "./engine-client.js";
import { HandleTable } from "./handles.js";
import { listen, SERVICE_NAMES, type ServerDeps } from "./server.js";
import { TokenizePool } from "./tokenize-pool.js";

/** The front end's parts: the engine client, serving state, and what the RPC handlers depend on. */
export function frontEnd(
  config: Config,
  log: Logger,
  telemetry?: Telemetry,
): { engine: EngineClient; deps: ServerDeps } {
  const readiness = new Readiness(SERVICE_NAMES.filter((s) => s.startsWith("kvpark.")));
  let tokenizers: TokenizePool | undefined;
  let closed = false;
  // The front end tokenizes prompts itself so that validation and lookups never wait for the engine,
  // long ones on worker threads so that they never hold its event loop. It loads them for the model
  // an engine has loaded before that engine serves: measured on the small model, a first request
  // sent as the engine became ready while the workers loaded took 140-170 ms to its first token at
  // the client, against 44 ms three seconds later.
  const prepare = async (info: ModelInfo) => {
    if (closed || info.dir === tokenizers?.dir) return;
    const t0 = performance.now();
    const old = tokenizers;
    tokenizers = new TokenizePool(info.dir, config.tokenizerWorkers);
    // Calls already tokenizing with the previous model's tokenizer finish with it.
    void old?.close();
    await tokenizers.ready;
    const ms = Math.round(performance.now() - t0);
    log.info(
      { event: "tokenizers_ready", model: info.name, workers: config.tokenizerWorkers, ms },
      `tokenizers loaded in ${ms} ms`,
    );
  };
  const engine = new EngineClient(config, log, (serving) => readiness.set(serving), prepare);
  telemetry?.observeCache(engine);
  const deps: ServerDeps = {
    config,
    log,
    readiness,
    engine,
    tokenizer: () => tokenizers?.tokenizer,
    encoder: () => tokenizers,
    close: async () => {
      closed = true;
      await tokenizers?.close();
    },
    admission: new Admission(config.requestsMax, config.tenantRequestsMax),
    handles: new HandleTable(config.handlesMax, config.handleTtlSeconds * 1000),
    telemetry,
    recentRequests: config.console ? new RecentRequests() : undefined,
  };
  return { engine, deps };
}

/** Runs the server until SIGTERM or SIGINT, then shuts down gracefully and exits 0. */
export async function serve(config: Config): Promise<void> {
  const log = createLogger(config.logLevel);
  // Before listening, so that the first call is traced; undefined (and nothing loaded) when off.
  const telemetry = await startTelemetry(config, log);
  const { engine, deps } = frontEnd(config, log, telemetry);
  // A port in use is a ConfigError (exit 2); the telemetry already started must not keep the process up.
  const server = await listen(config, deps).catch(async (err: unknown) => {
    await telemetry?.shutdown();
    throw err;
  });
  log.info(
    {
      event: "listening",
      host: config.host,
      port: server.port,
      tls: Boolean(config.tlsCert),
      mtls: Boolean(config.tlsCa),
    },
    `listening on ${config.host}:${server.port}`,
  );
  let stopping = false;
  const stop = async (signal: string, exitCode = 0) => {
    if (stopping) return;
    stopping = true;
    log.info({ event: "shutdown", signal, inflight: engine.inflight }, "shutting down");
    await server.shutdown(config.shutdownGraceMs);
    // Every call has ended, so its spans are complete: export them and the last metrics before exit.
    await telemetry?.shutdown();
    await engine.stop();
    log.info({ event: "stopped" }, "stopped");
    log.flush();
    process.exit(exitCode);
  };
  // A model that cannot load will not load on a restart either: say why and exit non-zero, so a
  // supervisor or the person at the terminal sees it, instead of serving NOT_SERVING forever.
  engine.onFatal = (fatal) => {
    console.error(`kvpark: the model cannot be served: ${fatal.message}`);
    void stop("engine_fatal", 1);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  engine.start();
}
