import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { presetNames } from "../../src/model-gen/generate";
import { makeCerts } from "../helpers/certs";
import { CLI, testModel } from "../helpers/server";

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `kvpark serve` with these arguments until it exits by itself (killed after 60 s). */
function serve(args: string[]): Promise<Run> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-cli-"));
  const child = spawn(process.execPath, [CLI, "serve", "--data-dir", dataDir, ...args], {
    env: { ...process.env, KVPARK_LOG_LEVEL: "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  return new Promise((resolve) =>
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      fs.rmSync(dataDir, { recursive: true, force: true });
      resolve({ code, signal, stdout, stderr });
    }),
  );
}

/** A port nothing listens on now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Whether a listener can take `port` on 127.0.0.1, i.e. nobody kept it. */
async function portIsFree(port: number): Promise<boolean> {
  const server = net.createServer();
  return new Promise((resolve) => {
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** What `kvpark serve` prints on stderr for these configuration problems. */
function invalid(...problems: string[]): string {
  return `kvpark: invalid configuration:\n${problems.map((p) => `  ${p}\n`).join("")}`;
}

describe("kvpark serve with a bad configuration", () => {
  let model: string;
  beforeAll(() => {
    model = testModel();
  });

  /** Runs with `args` on a free port; the run must end before anything listened. */
  async function refused(args: string[]): Promise<Run> {
    const port = await freePort();
    const run = await serve(["--port", String(port), "--model", model, ...args]);
    expect({ code: run.code, signal: run.signal, stdout: run.stdout }).toEqual({
      code: 2,
      signal: null,
      stdout: "",
    });
    expect(await portIsFree(port)).toBe(true);
    return run;
  }

  it("exits 2 on a --model that is neither a directory nor a preset", async () => {
    const run = await refused(["--model", "/nonexistent/model-dir"]);
    expect(run.stderr).toBe(
      invalid(
        `--model /nonexistent/model-dir: no such directory, and not a preset (${presetNames().join(", ")})`,
      ),
    );
  });

  it("exits 2 on tokens shorter than 16 characters, naming the flag, the entry and the minimum", async () => {
    const run = await refused(["--auth-tokens", "a=tokA,b=tokB"]);
    expect(run.stderr).toBe(
      invalid(
        "--auth-tokens entry 1 (tenant a): the token has 4 characters; tokens need at least 16",
        "--auth-tokens entry 2 (tenant b): the token has 4 characters; tokens need at least 16",
      ),
    );
  });

  it("exits 2 on malformed --admin-tokens and a token file that does not exist", async () => {
    const run = await refused(["--admin-tokens", "ops", "--auth-tokens", "@/nonexistent/tokens.txt"]);
    expect(run.stderr).toBe(
      invalid(
        "--auth-tokens @/nonexistent/tokens.txt: no such file",
        "--admin-tokens entry 1: expected tenant=token",
      ),
    );
  });

  it("exits 2 on TLS files that do not exist or do not hold a certificate and its key", async () => {
    const certs = makeCerts();
    const missing = await refused(["--tls-cert", "/nonexistent/cert.pem", "--tls-key", certs.serverKey]);
    expect(missing.stderr).toBe(invalid("--tls-cert /nonexistent/cert.pem: no such file"));
    const ca = await refused([
      "--tls-cert",
      certs.serverCert,
      "--tls-key",
      certs.serverKey,
      "--tls-ca",
      certs.dir,
    ]);
    expect(ca.stderr).toBe(invalid(`--tls-ca ${certs.dir}: not a file`));
    const mismatched = await refused(["--tls-cert", certs.serverCert, "--tls-key", certs.clientKey]);
    expect(mismatched.stderr).toMatch(
      /^kvpark: invalid configuration:\n {2}--tls-cert, --tls-key: not a usable certificate and key \(.*key values mismatch\)\n$/,
    );
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  it("exits 2 on a size with an unknown unit or outside the option's bounds", async () => {
    const run = await refused(["--ram-bytes-max", "2XB", "--message-bytes-max", "2GiB"]);
    expect(run.stderr).toBe(
      invalid(
        '--ram-bytes-max: expected a size such as 512MiB, 1.5GiB or 2GB (KiB, MiB, GiB, TiB: powers of 1024; KB, MB, GB, TB: powers of 1000) or a number of bytes, got "2XB" (set --ram-bytes-max)',
        "--message-bytes-max: 2GiB is outside 1 KiB..1 GiB (set --message-bytes-max)",
      ),
    );
  });

  it("exits 2 when --port is in use, before it logs that it listens", async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const { port } = taken.address() as net.AddressInfo;
    try {
      const run = await serve(["--port", String(port), "--model", model]);
      expect(run).toEqual({
        code: 2,
        signal: null,
        stdout: "",
        stderr: invalid(`--port ${port} on 127.0.0.1 is already in use (set --port; 0 picks a free one)`),
      });
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });

  it("exits 1 with the engine's reason on a model directory that exists but holds no model", async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-empty-model-"));
    const run = await serve(["--port", "0", "--model", empty]);
    fs.rmSync(empty, { recursive: true, force: true });
    expect({ code: run.code, signal: run.signal }).toEqual({ code: 1, signal: null });
    // This one is found by the engine, so the server had listened.
    expect(run.stdout).toContain('"event":"listening"');
    expect(run.stderr).toBe(
      `kvpark: the model cannot be served: config.json not found in ${empty}: point --model at a Hugging Face or mlx-community model directory\n`,
    );
  });
});
