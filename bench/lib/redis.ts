import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

/** A free TCP port on the loopback interface (closed again before it is returned). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** redis-cli against one server; its stdout, trimmed. Throws when it fails. */
export function redisCli(port: number, ...args: string[]): string {
  const r = spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(" ")}: ${r.stderr || r.stdout}`);
  return r.stdout.trim();
}

async function until(what: string, ok: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (ok()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * A redis-server of the machine (Debian's redis-server package) on a free loopback port, in a
 * temporary directory, persisting nothing (--save "" --appendonly no). Stopped by its pid.
 */
export class RedisServer {
  private child: ChildProcess | null = null;

  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly extra: string[],
  ) {}

  /** Starts a server; `extra` arguments are passed on (cluster mode, maxmemory...). */
  static async start(extra: string[] = [], port?: number): Promise<RedisServer> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-redis-"));
    const server = new RedisServer(port ?? (await freePort()), dir, extra);
    await server.restart();
    return server;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts the server again on the same port (after stop or kill): it comes back empty. */
  async restart(): Promise<void> {
    const args = [
      "--port",
      String(this.port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      this.dir,
      "--daemonize",
      "no",
      ...this.extra,
    ];
    const child = spawn("redis-server", args, { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    await until(`redis-server on ${this.port} ${stderr}`, () => {
      if (child.exitCode !== null) throw new Error(`redis-server exited: ${stderr}`);
      return redisCli(this.port, "ping") === "PONG";
    });
  }

  /** Stops the server by its pid (SIGKILL: as if the machine went away) and waits for its exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill(signal);
    await exited;
  }

  /** Stops the server and removes its directory. */
  async stop(): Promise<void> {
    await this.kill("SIGTERM");
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A Redis Cluster of `masters` masters without replicas on loopback ports, made with
 * `redis-cli --cluster create`; ready once every node says cluster_state:ok. Nodes notice a dead
 * peer after 2 s (cluster-node-timeout), and the survivors keep serving their slots when one is
 * lost (cluster-require-full-coverage no), which is what an operator of a cache wants.
 */
export class RedisCluster {
  private constructor(readonly nodes: RedisServer[]) {}

  static async start(masters = 3): Promise<RedisCluster> {
    const nodes = await Promise.all(
      Array.from({ length: masters }, () =>
        RedisServer.start([
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          "nodes.conf",
          "--cluster-node-timeout",
          "2000",
          "--cluster-require-full-coverage",
          "no",
        ]),
      ),
    );
    const cluster = new RedisCluster(nodes);
    const r = spawnSync(
      "redis-cli",
      [
        "--cluster",
        "create",
        ...nodes.map((n) => `127.0.0.1:${n.port}`),
        "--cluster-yes",
        "--cluster-replicas",
        "0",
      ],
      { encoding: "utf8" },
    );
    if (r.status !== 0) {
      await cluster.stop();
      throw new Error(`redis-cli --cluster create failed: ${r.stdout} ${r.stderr}`);
    }
    await until("cluster_state:ok", () =>
      nodes.every((n) => redisCli(n.port, "cluster", "info").includes("cluster_state:ok")),
    );
    return cluster;
  }

  /** The seed addresses, as --shared-tier takes them. */
  get url(): string {
    return this.nodes.map((n) => n.url).join(",");
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
  }
}
