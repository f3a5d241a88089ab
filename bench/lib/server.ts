import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import * as readline from "node:readline";

/** The compiled CLI, next to this file's compiled form (dist/bench/lib -> dist/src). */
export const CLI = path.resolve(__dirname, "../../src/cli.js");

interface LogLine {
  event?: string;
  [key: string]: unknown;
}

// USER_HZ; 100 on every Linux architecture kvpark runs on.
const CLOCK_TICKS = 100;

/** Options of one `kvpark serve` process. */
export interface ServeOptions {
  dataDir: string;
  /** Model directory. */
  model: string;
  /** Extra flags, e.g. ["--cache=false"]. */
  args?: string[];
}

/** A `kvpark serve` process on a free loopback port, started and stopped by the benchmark. */
export class BenchServer {
  port = 0;
  stderr = "";
  /** Milliseconds from spawn to `listening` and to `engine_ready`. */
  listeningMs = 0;
  readyMs = 0;
  private readonly lines: LogLine[] = [];
  private waiters: Array<{ event: string; resolve: (l: LogLine) => void }> = [];
  private readonly exited: Promise<number | null>;

  private constructor(
    private readonly child: ChildProcess,
    readonly options: ServeOptions,
  ) {
    readline.createInterface({ input: child.stdout! }).on("line", (text) => {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        return;
      }
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => {
        if (w.event !== line.event) return true;
        w.resolve(line);
        return false;
      });
    });
    child.stderr!.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-20000);
    });
    this.exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  }

  static async start(options: ServeOptions, timeoutMs = 300_000): Promise<BenchServer> {
    const args = [
      CLI,
      "serve",
      "--port",
      "0",
      "--data-dir",
      options.dataDir,
      "--model",
      options.model,
      ...(options.args ?? []),
    ];
    const t0 = performance.now();
    const child = spawn(process.execPath, args, {
      env: { ...process.env, KVPARK_LOG_LEVEL: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const server = new BenchServer(child, options);
    const listening = await server.waitEvent("listening", timeoutMs);
    server.listeningMs = performance.now() - t0;
    server.port = Number(listening.port);
    await server.waitEvent("engine_ready", timeoutMs);
    server.readyMs = performance.now() - t0;
    return server;
  }

  /** Pid of the engine process (the one running MLX), from its `engine_start` log line. */
  get enginePid(): number | undefined {
    const line = [...this.lines].reverse().find((l) => l.event === "engine_start");
    return typeof line?.pid === "number" ? line.pid : undefined;
  }

  /**
   * CPU time (user + system) the engine process has used so far, in milliseconds; NaN when unknown.
   * Compared with wall time it shows how much of the two cores the engine actually got.
   */
  engineCpuMs(): number {
    const pid = this.enginePid;
    if (pid === undefined) return Number.NaN;
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // Fields 14 and 15 of proc(5), counted from the state field (3): utime, stime in clock ticks.
      return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
    } catch {
      return Number.NaN;
    }
  }

  /**
   * Resident set size of the engine process as the kernel reports it (VmRSS), in bytes; NaN when
   * unknown. A cross-check of the engine's own report in Stats, read without asking the server.
   */
  engineRssBytes(): number {
    const pid = this.enginePid;
    if (pid === undefined) return Number.NaN;
    try {
      const kib = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
      return kib === undefined ? Number.NaN : Number(kib) * 1024;
    } catch {
      return Number.NaN;
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private waitEvent(event: string, timeoutMs: number): Promise<LogLine> {
    const seen = this.lines.find((l) => l.event === event);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.child.kill("SIGKILL");
        reject(
          new Error(`kvpark serve: no ${event} within ${timeoutMs} ms; stderr: ${this.stderr.slice(-2000)}`),
        );
      }, timeoutMs);
      this.exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`kvpark serve exited with ${code} before ${event}: ${this.stderr.slice(-2000)}`));
      });
      this.waiters.push({
        event,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  }

  /** SIGTERM, then the exit (the engine writes what the cache has queued before it stops). */
  async stop(timeoutMs = 120_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }
}
