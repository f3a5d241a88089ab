import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { makeCerts } from "../helpers/certs";
import { ROOT, startServer, type ServerProcess } from "../helpers/server";

const TOKEN = "python-package-token-0001";
const PACKAGE = path.join(ROOT, "clients/python");
const GENERATE = "/kvpark.v1.InferenceService/Generate";
const BUSY = "server busy: 1 generation requests in flight (--requests-max); retry later";

/** The generated files under a directory, relative to it, sorted. */
function generatedFiles(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[])
    .filter((f) => /_pb2(_grpc)?\.pyi?$/.test(f))
    .sort();
}

/** A loopback port nothing listens on (taken from the OS, then released). */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A deadline that passed: the client's own ("Deadline Exceeded") or, when the server noticed it
 * first, the server's ("the operation timed out"); which one wins is a race.
 */
function expectDeadline(got: [string, string]): void {
  expect(got[0]).toBe("DEADLINE_EXCEEDED");
  expect(["Deadline Exceeded", "the operation timed out"]).toContain(got[1]);
}

describe("Python package (clients/python installed offline into a venv with Debian's grpcio)", () => {
  let tmp: string;
  let certs: ReturnType<typeof makeCerts>;
  let plain: ServerProcess;
  let secure: ServerProcess;
  let venv = "";

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-pypkg-"));
    certs = makeCerts();
    const auth = ["--auth-tokens", `py=${TOKEN}`];
    [plain, secure] = await Promise.all([
      startServer({ args: [...auth, "--requests-max", "1"] }),
      startServer({
        args: [...auth, "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--tls-ca", certs.ca],
      }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([plain?.stop(), secure?.stop()]);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it("has its stubs committed as generate_stubs.sh makes them", () => {
    const out = path.join(tmp, "gen");
    execFileSync("bash", [path.join(PACKAGE, "generate_stubs.sh"), out], { stdio: "pipe" });
    const committed = path.join(PACKAGE, "src");
    const files = generatedFiles(out);
    expect(generatedFiles(committed)).toEqual(files);
    expect(files).toEqual([
      "kvpark/grpc_health/v1/health_pb2.py",
      "kvpark/grpc_health/v1/health_pb2.pyi",
      "kvpark/grpc_health/v1/health_pb2_grpc.py",
      "kvpark/v1/common_pb2.py",
      "kvpark/v1/common_pb2.pyi",
      "kvpark/v1/console_pb2.py",
      "kvpark/v1/console_pb2.pyi",
      "kvpark/v1/console_pb2_grpc.py",
      "kvpark/v1/inference_pb2.py",
      "kvpark/v1/inference_pb2.pyi",
      "kvpark/v1/inference_pb2_grpc.py",
      "kvpark/v1/kvblocks_pb2.py",
      "kvpark/v1/kvblocks_pb2.pyi",
      "kvpark/v1/kvblocks_pb2_grpc.py",
      "kvpark/v1/model_pb2.py",
      "kvpark/v1/model_pb2.pyi",
      "kvpark/v1/model_pb2_grpc.py",
    ]);
    for (const f of files) {
      expect([f, fs.readFileSync(path.join(committed, f), "utf8")]).toEqual([
        f,
        fs.readFileSync(path.join(out, f), "utf8"),
      ]);
    }
  });

  it("installs offline into a fresh virtual environment, and the clients work against running servers", async () => {
    // The package is copied first: pip builds in the source tree, which must stay clean.
    const source = path.join(tmp, "source");
    fs.cpSync(PACKAGE, source, {
      recursive: true,
      filter: (f) => !/(^|\/)(build|[^/]*\.egg-info|__pycache__)$/.test(f),
    });
    venv = path.join(tmp, "venv");
    execFileSync("/usr/bin/python3", ["-m", "venv", "--system-site-packages", venv], { stdio: "pipe" });
    const pip = execFileSync(
      path.join(venv, "bin/pip"),
      [
        "install",
        "--no-build-isolation",
        "--no-index",
        "--no-cache-dir",
        "--disable-pip-version-check",
        source,
      ],
      { encoding: "utf8", stdio: "pipe" },
    );
    expect(pip).toMatch(/^Successfully installed kvpark-0\.1\.0$/m);

    const closed = await closedPort();
    const out = JSON.parse(
      execFileSync(
        path.join(venv, "bin/python"),
        [
          path.join(ROOT, "test/python/client_check.py"),
          `127.0.0.1:${plain.port}`,
          `127.0.0.1:${secure.port}`,
          TOKEN,
          certs.dir,
          `127.0.0.1:${closed}`,
        ],
        // Not PYTHONPATH: the package must come from the virtual environment.
        { encoding: "utf8", stdio: "pipe", env: { ...process.env, PYTHONPATH: "" }, timeout: 120_000 },
      ),
    );
    expect(out.version).toBe("0.1.0");
    expect(path.relative(venv, out.module)).toMatch(/^lib\/python3\.\d+\/site-packages\/kvpark$/);

    const s = out.sync;
    expect(s.health).toBe("SERVING");
    expect(s.tokenize.length).toBeGreaterThan(0);
    expect(s.generate.kinds).toEqual(["started", "delta", "finished"]);
    expect(s.generate.prompt_tokens).toBe(s.tokenize.length);
    expect(s.generate.finish).toBe("FINISH_REASON_MAX_TOKENS");
    expect(s.generate.ids).toHaveLength(8);
    expect(s.generate.completion_tokens).toBe(8);
    // Greedy decoding gives the same ids again (the second time from the cache).
    expect(s.generate_again.ids).toEqual(s.generate.ids);
    expect(s.lookup_prompt_tokens).toBe(s.tokenize.length);
    expect(s.stats_fingerprint_matches_info).toBe(true);
    expect(s.stats_block_tokens).toEqual([64, 64]);
    expect(s.detokenize).toBe("The quick brown fox");
    expectDeadline(s.deadline);
    expect(s.closed_first).toBe("started");
    expect(s.after_close).toBe("FINISH_REASON_MAX_TOKENS");
    expect(s.holder_first).toBe(true);
    expect(s.busy_once).toEqual(["RESOURCE_EXHAUSTED", BUSY]);
    // The first attempt was refused; the holder was cancelled then, so a later attempt got the slot.
    expect(s.busy_retried).toBe("FINISH_REASON_MAX_TOKENS");
    expect(s.busy_retries.length).toBeGreaterThanOrEqual(1);
    s.busy_retries.forEach((r: unknown[], i: number) =>
      expect(r).toEqual([GENERATE, i + 1, "RESOURCE_EXHAUSTED"]),
    );
    expect(s.busy_first_details).toBe(BUSY);
    expect(s.holder_code).toBe("CANCELLED");
    expectDeadline(s.default_deadline);
    // Nothing else was retried: not the deadlines, not the successful calls.
    expect(s.retries).toEqual([]);
    expect(s.no_token).toEqual([
      "UNAUTHENTICATED",
      "missing bearer token: send metadata authorization: Bearer <token>",
    ]);
    expect(s.no_token_health).toBe("SERVING");
    expect(s.unavailable).toBe("UNAVAILABLE");
    expect(s.unavailable_retries).toEqual([
      ["/kvpark.v1.KVBlocksService/Stats", 1, "UNAVAILABLE"],
      ["/kvpark.v1.KVBlocksService/Stats", 2, "UNAVAILABLE"],
    ]);
    expect(s.tls_health).toBe("SERVING");
    expect(s.tls_generate).toEqual(s.generate.ids);
    expect(s.tls_no_client_cert).toBe("UNAVAILABLE");

    const a = out.async;
    expect(a.health).toBe("SERVING");
    expect(a.tokenize).toEqual(s.tokenize);
    expect(a.generate).toEqual(s.generate);
    expect(a.lookup_prompt_tokens).toBe(s.tokenize.length);
    expect(a.stats_fingerprint_matches_info).toBe(true);
    expectDeadline(a.deadline);
    expect(a.holder_first).toBe(true);
    expect(a.busy_once).toEqual(["RESOURCE_EXHAUSTED", BUSY]);
    expect(a.busy_retried).toBe("FINISH_REASON_MAX_TOKENS");
    expect(a.busy_retries.length).toBeGreaterThanOrEqual(1);
    a.busy_retries.forEach((r: unknown[], i: number) =>
      expect(r).toEqual([GENERATE, i + 1, "RESOURCE_EXHAUSTED"]),
    );
    expect(a.holder_code).toBe("CANCELLED");
    expect(a.retries).toEqual([]);
    expect(a.no_token).toEqual(s.no_token);
    expect(a.unavailable).toBe("UNAVAILABLE");
    expect(a.unavailable_retries).toEqual(s.unavailable_retries);
    expect(a.tls_health).toBe("SERVING");
    expect(a.tls_generate).toEqual(s.generate.ids);
  });

  it("runs clients/python/example.py from the virtual environment", () => {
    expect(venv).not.toBe("");
    const r = spawnSync(
      path.join(venv, "bin/python"),
      [
        path.join(PACKAGE, "example.py"),
        "--target",
        `http://127.0.0.1:${plain.port}`,
        "--max-tokens",
        "4",
        "Hello",
      ],
      { encoding: "utf8", env: { ...process.env, PYTHONPATH: "", KVPARK_TOKEN: TOKEN }, timeout: 60_000 },
    );
    expect(r.stderr).toMatch(
      /^\[\d+ prompt tokens: \d+ from RAM, \d+ from SSD, \d+ computed\]\n\n\[FINISH_REASON_MAX_TOKENS; ttft \d+ ms\]\n$/,
    );
    expect(r.status).toBe(0);
  });
});
