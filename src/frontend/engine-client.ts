import { fork, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Config } from "../config.js";
import {
  KV_STREAM_WINDOW_BYTES,
  type EngineStats,
  type BlockListing,
  type BlockSelection,
  type CacheStats,
  type ClearReport,
  type EvictReport,
  type EvictTier,
  type ExportReport,
  type FromEngine,
  type ImportReport,
  type KvOp,
  type KvResult,
  type LookupResult,
  type ModelInfo,
  type PinHint,
  type PinReport,
  type ToEngine,
} from "../engine-ipc.js";
import { allocatorEnv } from "../engine/allocator.js";
import { KvparkError, type ErrorCode } from "../errors.js";
import type { Logger } from "../log.js";
import { AsyncQueue } from "../util/async-queue.js";

/** Per-request events the engine streams back to the front end. */
export type EngineEvent = Extract<FromEngine, { id: number }>;

/** Ends a request's event stream. */
function isLast(ev: EngineEvent): boolean {
  return ev.type === "finished" || ev.type === "kv-result" || (ev.type === "prefill-progress" && ev.done);
}

/** What a Generate call asks of the engine. */
export type EngineRequest = Omit<Extract<ToEngine, { type: "generate" }>, "type" | "id">;

/** A call in flight in the engine: its events, and the means to send it more input. */
export interface EngineCall {
  id: number;
  events: AsyncIterable<EngineEvent>;
  send(msg: ToEngine): void;
}

function mismatch(op: string, r: KvResult): KvparkError {
  return new KvparkError("INTERNAL", `the engine answered ${op} with a ${r.op} result`);
}

function engineEntry(): string {
  // Under ts-jest this file runs from source; the engine process always runs the compiled code.
  const compiled = path.join(__dirname, "../engine/main.js");
  if (fs.existsSync(compiled)) return compiled;
  return path.resolve(__dirname, "../../dist/src/engine/main.js");
}

/**
 * Runs the engine in a child process and restarts it when it dies. MLX aborts the whole process on
 * an internal error, so keeping it out of the front end is what lets the server survive one: in-flight
 * requests fail with UNAVAILABLE (retryable), health reports NOT_SERVING, and a new engine starts.
 */
export class EngineClient {
  private child?: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, AsyncQueue<EngineEvent>>();
  private stopping = false;
  private restartTimer?: NodeJS.Timeout;
  private readyWaiters: Array<(info: ModelInfo) => void> = [];
  /** The model served by the running engine; undefined until it is ready. */
  info?: ModelInfo;
  /** Set when the engine failed in a way restarting cannot fix (bad model path, ...). */
  fatal?: { code: ErrorCode; message: string };
  restarts = 0;
  /** The running engine's last report of its memory and scheduler; undefined until its first. */
  engineStats?: EngineStats;
  /** Which of the engine's loading messages make a log line (a few per load, not one per tensor). */
  private readonly loadingLog = new LoadingLog();
  /** Called when the engine cannot start at all (a model that does not load). */
  onFatal?: (fatal: { code: ErrorCode; message: string }) => void;

  /**
   * @param onReadiness told `true` when an engine is ready to serve and `false` when it stops
   *   (the health service's serving state follows it).
   * @param prepare what the front end does for a model an engine has just loaded before it serves
   *   it (loads the tokenizers): the engine counts as ready, and says so, once this resolved.
   */
  constructor(
    private readonly config: Config,
    private readonly log: Logger,
    private readonly onReadiness: (serving: boolean) => void,
    private readonly prepare: (info: ModelInfo) => Promise<void> = () => Promise.resolve(),
  ) {}

  start(): void {
    // The engine reads the whole validated configuration from its environment.
    const child = fork(engineEntry(), [], {
      serialization: "advanced",
      execArgv: ["--expose-gc"],
      env: {
        ...allocatorEnv(this.config.engineAllocator, process.env),
        KVPARK_ENGINE_CONFIG: JSON.stringify(this.config),
      },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      // A process group of its own: a terminal's Ctrl-C reaches the front end only, which stops the
      // engine itself (SIGTERM: the cache's queued writes are flushed). The engine still ends
      // with the front end (parent-watch.ts).
      detached: true,
    });
    this.child = child;
    child.on("message", (msg: FromEngine) => this.onMessage(msg));
    child.on("exit", (code, signal) => this.onExit(child, code, signal));
    // A message sent just as the engine died fails with EPIPE; its calls fail on the exit that follows.
    child.on("error", (err) =>
      this.log.warn({ event: "engine_ipc_error", err: err.message }, "engine IPC failed"),
    );
    this.log.info({ event: "engine_start", pid: child.pid, model: this.config.model }, "engine starting");
  }

  /** The engine and the front end are ready to serve `info`. */
  private becomeReady(info: ModelInfo): void {
    this.info = info;
    this.log.info(
      { event: "engine_ready", model: info.name, fingerprint: info.fingerprint, allocator: info.allocator },
      "engine ready",
    );
    this.onReadiness(true);
    for (const w of this.readyWaiters.splice(0)) w(info);
  }

  /** Resolves when an engine is ready (immediately if one is). */
  ready(): Promise<ModelInfo> {
    if (this.info) return Promise.resolve(this.info);
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  private onMessage(msg: FromEngine): void {
    switch (msg.type) {
      case "loading": {
        const step = this.loadingLog.step(msg.what, msg.loadedBytes, msg.totalBytes);
        if (step === undefined) return;
        this.log.info(
          {
            event: "model_loading",
            what: msg.what,
            loadedBytes: msg.loadedBytes,
            totalBytes: msg.totalBytes,
            percent: step,
          },
          msg.what === "weights" ? `loading model weights: ${step}%` : msg.what,
        );
        return;
      }
      case "ready": {
        this.loadingLog.reset();
        this.fatal = undefined;
        const child = this.child;
        // Serving starts once the front end is prepared too, so that the first calls find its
        // tokenizers loaded and do not share the CPU with their loading.
        this.prepare(msg.info).then(
          () => {
            if (this.child === child && child) this.becomeReady(msg.info);
          },
          (err: unknown) => {
            this.log.error({ event: "engine_fatal", code: "INTERNAL" }, (err as Error).message);
            this.fatal = { code: "INTERNAL", message: (err as Error).message };
            this.onFatal?.(this.fatal);
          },
        );
        return;
      }
      case "log":
        this.log.warn({ event: "engine_log" }, msg.message);
        return;
      case "engine-stats":
        this.engineStats = msg.stats;
        return;
      case "fatal":
        this.fatal = { code: msg.code, message: msg.message };
        this.log.error({ event: "engine_fatal", code: msg.code }, msg.message);
        return;
      case "failed": {
        const q = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        q?.fail(new KvparkError(msg.code, msg.message));
        return;
      }
      default: {
        const q = this.pending.get(msg.id);
        if (!q) return;
        q.push(msg);
        if (isLast(msg)) {
          this.pending.delete(msg.id);
          q.end();
        }
      }
    }
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    this.child = undefined;
    this.info = undefined;
    this.engineStats = undefined;
    this.onReadiness(false);
    const err = new KvparkError("ENGINE_UNAVAILABLE", "the engine stopped while serving this request; retry");
    for (const q of this.pending.values()) q.fail(err);
    this.pending.clear();
    if (this.stopping) return;
    if (this.fatal) {
      // Restarting cannot fix a model that does not load.
      this.log.error({ event: "engine_exit", code, signal }, `engine cannot start: ${this.fatal.message}`);
      this.onFatal?.(this.fatal);
      return;
    }
    this.restarts++;
    this.log.error(
      { event: "engine_exit", code, signal, restarts: this.restarts },
      "engine died; restarting",
    );
    this.restartTimer = setTimeout(() => this.start(), this.config.engineRestartDelayMs);
  }

  /**
   * Starts a call in the engine with `first(id)` as its opening message. The events end with the
   * call's last event (`finished`, `kv-result`, final `prefill-progress`) or throw its error; an
   * aborted signal cancels the call in the engine.
   */
  call(first: (id: number) => ToEngine, signal: AbortSignal): EngineCall {
    if (!this.child?.connected || !this.info) {
      throw new KvparkError(
        "ENGINE_UNAVAILABLE",
        this.fatal ? `no model is served: ${this.fatal.message}` : "the engine is starting; retry shortly",
      );
    }
    signal.throwIfAborted();
    const id = this.nextId++;
    const q = new AsyncQueue<EngineEvent>();
    this.pending.set(id, q);
    const child = this.child;
    const onAbort = () => {
      if (!this.pending.delete(id)) return;
      if (child.connected) child.send({ type: "cancel", id });
      q.fail(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    child.send(first(id));
    return {
      id,
      events: q,
      send: (msg) => {
        if (this.pending.has(id) && child.connected) child.send(msg);
      },
    };
  }

  /** Sends a generation to the engine; the stream ends with a `finished` event or throws. */
  generate(req: EngineRequest, signal: AbortSignal): AsyncIterable<EngineEvent> {
    return this.call((id) => ({ type: "generate", id, ...req }), signal).events;
  }

  /** How much of a prompt the tenant has cached, and where. */
  async lookup(tenant: string, tokens: number[], signal: AbortSignal): Promise<LookupResult> {
    const r = await this.kv(tenant, { op: "lookup", tokens }, signal);
    if (r.op === "lookup") return r.value;
    throw mismatch("lookup", r);
  }

  /** Pins the selected blocks. */
  async pin(
    tenant: string,
    selection: BlockSelection,
    kind: PinHint,
    signal: AbortSignal,
  ): Promise<PinReport> {
    const r = await this.kv(tenant, { op: "pin", selection, kind }, signal);
    if (r.op === "pin") return r.value;
    throw mismatch("pin", r);
  }

  /** Unpins the selected blocks. */
  async unpin(
    tenant: string,
    selection: BlockSelection,
    signal: AbortSignal,
  ): Promise<{ unpinnedBlocks: number }> {
    const r = await this.kv(tenant, { op: "unpin", selection }, signal);
    if (r.op === "unpin") return r.value;
    throw mismatch("unpin", r);
  }

  /** The cache's numbers: the tenant's own blocks, or server-wide with `all`. */
  async stats(tenant: string, all: boolean, signal: AbortSignal): Promise<CacheStats> {
    const r = await this.kv(tenant, { op: "stats", all }, signal);
    if (r.op === "stats") return r.value;
    throw mismatch("stats", r);
  }

  /**
   * One page of cached blocks after the hex key `after`: the tenant's, or with `names` (an admin's
   * call) every tenant's, named by those of `names` that own them.
   */
  async listBlocks(
    tenant: string,
    page: { names?: string[]; pageSize: number; after: string },
    signal: AbortSignal,
  ): Promise<BlockListing> {
    const r = await this.kv(tenant, { op: "listBlocks", ...page }, signal);
    if (r.op === "listBlocks") return r.value;
    throw mismatch("listBlocks", r);
  }

  /** Takes the selected blocks out of a tier or both (pinned ones only with `force`). */
  async evict(
    tenant: string,
    selection: BlockSelection,
    options: { tier: EvictTier; force: boolean },
    signal: AbortSignal,
  ): Promise<EvictReport> {
    const r = await this.kv(tenant, { op: "evict", selection, ...options }, signal);
    if (r.op === "evict") return r.value;
    throw mismatch("evict", r);
  }

  /** Removes the tenant's blocks, or with `all` every block. */
  async clear(tenant: string, all: boolean, signal: AbortSignal): Promise<ClearReport> {
    const r = await this.kv(tenant, { op: "clear", all }, signal);
    if (r.op === "clear") return r.value;
    throw mismatch("clear", r);
  }

  /**
   * A bundle of the tenant's blocks (or the selected ones, with their chains), piece by piece. Each
   * piece is acknowledged to the engine when the caller asks for the next one, so the engine reads
   * ahead of a slow client by KV_STREAM_WINDOW_BYTES at most. Returns what was exported.
   */
  async *exportBundle(
    tenant: string,
    selection: BlockSelection | undefined,
    signal: AbortSignal,
  ): AsyncGenerator<Uint8Array, ExportReport> {
    const call = this.call(
      (id) => ({ type: "kv", id, tenant, op: "exportBundle", ...(selection && { selection }) }),
      signal,
    );
    for await (const ev of call.events) {
      if (ev.type === "kv-data") {
        yield ev.data;
        call.send({ type: "kv-ack", id: call.id, bytes: ev.data.byteLength });
      } else if (ev.type === "kv-result") {
        if (ev.result.op === "exportBundle") return ev.result.value;
        throw mismatch("exportBundle", ev.result);
      }
    }
    throw new KvparkError("INTERNAL", "the engine ended an Export without a result");
  }

  /**
   * Sends a bundle's pieces to the engine, which stores its blocks under the tenant, and returns
   * its answer. At most KV_STREAM_WINDOW_BYTES wait unread in the engine: past that, the next piece
   * waits for the engine to read. Stops sending as soon as the engine has answered (a refusal).
   */
  async importBundle(
    tenant: string,
    pieces: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
  ): Promise<ImportReport> {
    const call = this.call((id) => ({ type: "kv", id, tenant, op: "importBundle" }), signal);
    let unacked = 0;
    let wake: (() => void) | undefined;
    let result: KvResult | undefined;
    let failure: unknown;
    let answered = false;
    const events = (async () => {
      try {
        for await (const ev of call.events) {
          if (ev.type === "kv-ack") unacked -= ev.bytes;
          else if (ev.type === "kv-result") result = ev.result;
          wake?.();
        }
      } catch (err) {
        failure = err;
      } finally {
        answered = true;
        wake?.();
      }
    })();
    for await (const piece of pieces) {
      if (answered) break;
      call.send({ type: "kv-data", id: call.id, data: piece });
      unacked += piece.byteLength;
      while (unacked > KV_STREAM_WINDOW_BYTES && !answered) await new Promise<void>((r) => (wake = r));
    }
    call.send({ type: "kv-data", id: call.id });
    await events;
    if (failure !== undefined) throw failure;
    if (result?.op === "importBundle") return result.value;
    throw result
      ? mismatch("importBundle", result)
      : new KvparkError("INTERNAL", "the engine ended an Import without a result");
  }

  /** Runs a unary KVBlocks operation in the engine and returns its answer. */
  private async kv(tenant: string, op: KvOp, signal: AbortSignal): Promise<KvResult> {
    for await (const ev of this.call((id) => ({ type: "kv", id, tenant, ...op }), signal).events) {
      if (ev.type === "kv-result") return ev.result;
    }
    throw new KvparkError("INTERNAL", "the engine ended a KV call without a result");
  }

  /** Requests in flight in the engine. */
  get inflight(): number {
    return this.pending.size;
  }

  /** Stops the engine process, waiting for it to exit. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once("exit", (code, signal) => resolve({ code, signal })),
    );
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    const { code, signal } = await exited;
    clearTimeout(timer);
    this.log.info({ event: "engine_stopped", code, signal }, "engine stopped");
  }
}

/**
 * Thins the engine's loading progress to a few log lines: for each thing loaded (`what`), its start and
 * then each quarter reached (25, 50, 75, 100 %), so a load logs at most five lines however many
 * progress messages the engine sends.
 */
export class LoadingLog {
  private what = "";
  private logged = -1;

  /** Starts over: the next load (an engine restart) logs its progress again. */
  reset(): void {
    this.what = "";
    this.logged = -1;
  }

  /** The percentage to log for this progress message, or undefined to stay quiet. */
  step(what: string, done: number, total: number): number | undefined {
    const percent = total > 0 ? Math.floor((Math.min(done, total) / total) * 100) : 100;
    const quarter = percent === 0 ? 0 : Math.floor(percent / 25) * 25;
    if (what !== this.what) {
      this.what = what;
      this.logged = -1;
    }
    if (quarter <= this.logged) return undefined;
    this.logged = quarter;
    return quarter;
  }
}
