import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import { isCurrentlyGenerated } from "../../src/model-gen/generate";

export const ROOT = path.resolve(__dirname, "../..");
export const CLI = path.join(ROOT, "dist/src/cli.js");

/**
 * A generated model shared by the test files of one machine (generation is deterministic); made
 * again when the generator has changed since.
 */
export function testModel(preset = "tiny"): string {
  const dir = path.join(os.tmpdir(), "kvpark-test-models", preset);
  if (!isCurrentlyGenerated(dir, preset)) {
    fs.rmSync(dir, { recursive: true, force: true });
    const r = spawnSync(process.execPath, [CLI, "model", "generate", preset, "--out", dir], {
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`model generate failed: ${r.stderr}`);
  }
  return dir;
}

export interface LogLine {
  event?: string;
  msg?: string;
  [key: string]: unknown;
}

/** A kvpark server running as a real process on a free port. */
export class ServerProcess {
  readonly logs: LogLine[] = [];
  stderr = "";
  port = 0;
  private waiters: Array<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly child: ChildProcess,
    readonly dataDir: string,
  ) {
    readline.createInterface({ input: child.stdout! }).on("line", (line) => {
      let parsed: LogLine;
      try {
        parsed = JSON.parse(line);
      } catch {
        parsed = { msg: line };
      }
      this.logs.push(parsed);
      this.waiters = this.waiters.filter((w) => {
        if (!w.pred(parsed)) return true;
        w.resolve(parsed);
        return false;
      });
    });
    child.stderr!.on("data", (d) => (this.stderr += d));
    this.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  }

  /** Resolves with the first log line (past or future) that matches. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs = 60_000): Promise<LogLine> {
    const seen = this.logs.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for a log line; stderr: ${this.stderr.slice(-2000)}`)),
        timeoutMs,
      );
      this.waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  }

  waitEvent(event: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((l) => l.event === event, timeoutMs);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(
    signal: NodeJS.Signals = "SIGTERM",
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

export interface StartOptions {
  args?: string[];
  env?: Record<string, string>;
  dataDir?: string;
  model?: string;
  /** Wait until the engine reports ready (default true). */
  ready?: boolean;
  /** Start the server in a process group of its own, as a shell does (signal it with -pid). */
  detached?: boolean;
}

/** Starts `kvpark serve` on a free loopback port with a fresh data directory. */
export async function startServer(opts: StartOptions = {}): Promise<ServerProcess> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-data-"));
  const args = [
    CLI,
    "serve",
    "--port",
    "0",
    "--data-dir",
    dataDir,
    "--model",
    opts.model ?? testModel(),
    ...(opts.args ?? []),
  ];
  const child = spawn(process.execPath, args, {
    env: { ...process.env, KVPARK_LOG_LEVEL: "info", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: opts.detached ?? false,
  });
  const server = new ServerProcess(child, dataDir);
  const listening = await Promise.race([
    server.waitEvent("listening"),
    server.exited.then(({ code }) => {
      throw new Error(`server exited with ${code}: ${server.stderr}`);
    }),
  ]);
  server.port = listening.port as number;
  if (opts.ready ?? true) await server.waitEvent("engine_ready", 120_000);
  return server;
}
