import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  ConfigError,
  configHelp,
  configMarkdown,
  formatBytes,
  loadConfig,
  parseBytes,
  parseOrigins,
  parseSharedTier,
  parseTokens,
} from "./config";
import { presetNames } from "./model-gen/generate";

/** The problems loadConfig reports for these arguments and variables. */
function problems(argv: string[], env: NodeJS.ProcessEnv = {}): string[] | undefined {
  try {
    loadConfig(argv, env);
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return undefined;
}

describe("loadConfig", () => {
  it("takes defaults, then KVPARK_* variables, then flags", () => {
    const c = loadConfig(["--port", "6000", "--log-level=debug"], {
      KVPARK_PORT: "5000",
      KVPARK_MAX_TOKENS_DEFAULT: "32",
    });
    expect(c.port).toBe(6000);
    expect(c.maxTokensDefault).toBe(32);
    expect(c.logLevel).toBe("debug");
    expect(c.host).toBe("127.0.0.1");
  });

  it("names every problem and the flag that fixes it", () => {
    const env = { KVPARK_TEST_ENGINE_ABORT: "maybe" };
    expect(
      problems(["--port", "70000", "--log-level", "loud", "--tls-cert", "a.pem", "--bogus"], env),
    ).toEqual([
      'KVPARK_TEST_ENGINE_ABORT: expected true or false, got "maybe" (set --test-engine-abort=true|false)',
      "--port: 70000 is outside 0..65535 (set --port)",
      '--log-level: "loud" is not one of trace, debug, info, warn, error, fatal, silent (set --log-level)',
      "unknown option --bogus (see --help)",
      "--tls-cert and --tls-key must be set together",
      "--tls-cert a.pem: no such file",
    ]);
  });

  it("takes --shared-tier as redis:// addresses, several for a cluster, and says what is not one", () => {
    const one = loadConfig(["--shared-tier", "redis://cache.local:6380"], {});
    expect(parseSharedTier(one.sharedTier).urls).toEqual(["redis://cache.local:6380"]);
    const seeds = "redis://a:7000, redis://b:7001,redis://c:7002";
    expect(parseSharedTier(loadConfig([], { KVPARK_SHARED_TIER: seeds }).sharedTier).urls).toEqual([
      "redis://a:7000",
      "redis://b:7001",
      "redis://c:7002",
    ]);
    expect(
      problems(
        [
          "--shared-tier",
          "localhost:6379,http://x:1,redis://h/x,rediss://h:1",
          "--shared-tier-timeout-ms",
          "0",
        ],
        {},
      ),
    ).toEqual([
      "--shared-tier-timeout-ms: 0 is outside 1..60000 (set --shared-tier-timeout-ms)",
      '--shared-tier: "localhost:6379" is not a redis:// or rediss:// address',
      '--shared-tier: "http://x:1" is not a redis:// or rediss:// address',
      '--shared-tier: "redis://h/x": the path may only name a database number',
    ]);
    expect(problems(["--shared-tier", "redis://a:1,rediss://b:2"], {})).toEqual([
      "--shared-tier: mix of redis:// and rediss:// addresses; use one scheme",
    ]);
  });

  it("takes --engine-allocator jemalloc (the default) or system, and names the choices otherwise", () => {
    expect(loadConfig([]).engineAllocator).toBe("jemalloc");
    expect(loadConfig(["--engine-allocator", "system"]).engineAllocator).toBe("system");
    expect(problems(["--engine-allocator", "tcmalloc"])).toEqual([
      expect.stringMatching(/--engine-allocator.*tcmalloc.*jemalloc, system/),
    ]);
  });

  it("refuses a default max_tokens above the limit", () => {
    expect(() => loadConfig(["--max-tokens-default", "100", "--max-tokens-limit", "50"], {})).toThrow(
      "--max-tokens-default (100) exceeds --max-tokens-limit (50)",
    );
  });

  it("reads booleans bare or with a value, and names a flag that lacks its value", () => {
    expect(loadConfig(["--cache=false", "--cost-model"], {})).toMatchObject({
      cache: false,
      costModel: true,
    });
    expect(problems(["--ssd-fsync=sometimes", "stray", "--bogus=1", "--port"])).toEqual([
      '--ssd-fsync: "sometimes" is not one of batch, none (set --ssd-fsync)',
      "unknown option stray (see --help)",
      "unknown option --bogus=1 (see --help)",
      "--port needs a value",
    ]);
  });
  it("takes --cors-origins as origins or *, written as browsers send them, and names what is not one", () => {
    expect(parseOrigins(" https://App.Example.com/ ,http://127.0.0.1:8080,http://a.example:80,*,")).toEqual({
      origins: ["https://app.example.com", "http://127.0.0.1:8080", "http://a.example", "*"],
      problems: [],
    });
    expect(loadConfig(["--cors-origins", "http://127.0.0.1:8080"], {}).corsOrigins).toBe(
      "http://127.0.0.1:8080",
    );
    const not = (item: string) =>
      `--cors-origins: "${item}" is not an origin such as https://app.example.com or http://127.0.0.1:8080 (http or https, a host, an optional port, no path), nor * (set --cors-origins)`;
    expect(
      problems(["--cors-origins", "https://a.example/app,ftp://b.example,c.example,http://u@d.example"]),
    ).toEqual([
      not("https://a.example/app"),
      not("ftp://b.example"),
      not("c.example"),
      not("http://u@d.example"),
    ]);
  });

  it("takes sizes with binary or decimal units, or plain bytes, in flags and variables", () => {
    const c = loadConfig(
      [
        "--ram-bytes-max",
        "2GiB",
        "--ssd-bytes-max=1.5GiB",
        "--hard-pin-quota-bytes",
        "64KiB",
        "--message-bytes-max",
        "2MB",
        "--engine-memory-max",
        "3221225472",
      ],
      { KVPARK_RAM_BYTES_MAX: "1 gib", KVPARK_HARD_PIN_QUOTA_BYTES: "512MiB" },
    );
    expect(c).toMatchObject({
      ramBytesMax: 2 * 1024 ** 3,
      ssdBytesMax: 1.5 * 1024 ** 3,
      hardPinQuotaBytes: 64 * 1024,
      messageBytesMax: 2_000_000,
      engineMemoryMax: 3 * 1024 ** 3,
    });
    expect(loadConfig([], { KVPARK_SSD_BYTES_MAX: "2GB" }).ssdBytesMax).toBe(2_000_000_000);
  });

  it("parses a size exactly and says what is wrong with one that is not", () => {
    expect(parseBytes("1.1GB")).toEqual({ bytes: 1_100_000_000 });
    expect(parseBytes("0.5 KiB")).toEqual({ bytes: 512 });
    expect(parseBytes("1PiB")).toEqual({ bytes: 2 ** 50 });
    expect(parseBytes("7b")).toEqual({ bytes: 7 });
    const notASize = (text: string) => ({
      problem: `expected a size such as 512MiB, 1.5GiB or 2GB (KiB, MiB, GiB, TiB: powers of 1024; KB, MB, GB, TB: powers of 1000) or a number of bytes, got "${text}"`,
    });
    for (const text of ["2G", "2 GiBs", "-1", "1e9", "", "GiB", "1..5GiB", "2constructor"])
      expect(parseBytes(text)).toEqual(notASize(text));
    expect(parseBytes("0.1KiB")).toEqual({ problem: '"0.1KiB" is not a whole number of bytes' });
    expect(problems(["--ssd-bytes-max", "100MiB", "--hard-pin-quota-bytes", "1.5B"])).toEqual([
      '--hard-pin-quota-bytes: "1.5B" is not a whole number of bytes (set --hard-pin-quota-bytes)',
      "--ssd-bytes-max (100 MiB) must be 0 (no SSD tier) or at least 256 MiB",
    ]);
    expect(problems(["--message-bytes-max", "512"])).toEqual([
      "--message-bytes-max: 512 is outside 1 KiB..1 GiB (set --message-bytes-max)",
    ]);
  });

  it("shows sizes in units in --help and the README table", () => {
    expect([2 * 1024 ** 3, 1536, 32 * 1024 ** 2, 0, 1000, 2_000_000_000, 2 ** 50].map(formatBytes)).toEqual([
      "2 GiB",
      "1.5 KiB",
      "32 MiB",
      "0",
      "1 KB",
      "2 GB",
      "1 PiB",
    ]);
    expect(configHelp()).toContain(
      "  --ram-bytes-max              KVPARK_RAM_BYTES_MAX\n      Byte budget of the RAM tier (KV blocks held as MLX arrays). (default: 2 GiB)\n",
    );
    expect(configMarkdown()).toContain(
      "| `--ssd-bytes-max` | `KVPARK_SSD_BYTES_MAX` | `32 GiB` | Cap on the SSD tier's files",
    );
    // What --help shows is accepted back.
    expect(loadConfig(["--ram-bytes-max", "2 GiB"], {}).ramBytesMax).toBe(2 * 1024 ** 3);
  });

  it("takes every preset generate.ts can make as --model, and refuses other names", () => {
    for (const name of presetNames()) expect(loadConfig(["--model", name], {}).model).toBe(name);
    expect(problems(["--model", "small-8bit"])).toEqual([
      `--model small-8bit: no such directory, and not a preset (${presetNames().join(", ")})`,
    ]);
    expect(loadConfig(["--model", os.tmpdir()], {}).model).toBe(os.tmpdir());
  });

  it("checks --auth-tokens and --admin-tokens inline and in files, never quoting a token", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-tokens-"));
    const file = path.join(dir, "tokens.txt");
    fs.writeFileSync(
      file,
      "# tenants\n\nteam-a = 0123456789abcdef\nteam-b=0123456789abcdef\nteam-c=short\nbroken\nteam-d=0123456789 abcdef\n",
    );
    expect(parseTokens(`@${file}`, "--auth-tokens")).toEqual({
      tokens: new Map([["0123456789abcdef", "team-a"]]),
      problems: [
        `--auth-tokens @${file} line 4 (tenant team-b): the same token as tenant team-a`,
        `--auth-tokens @${file} line 5 (tenant team-c): the token has 5 characters; tokens need at least 16`,
        `--auth-tokens @${file} line 6: expected tenant=token`,
        `--auth-tokens @${file} line 7 (tenant team-d): the token contains a space`,
      ],
    });
    expect(parseTokens("a=tok=with=equals=0001,,b=fedcba9876543210", "--admin-tokens")).toEqual({
      tokens: new Map([
        ["tok=with=equals=0001", "a"],
        ["fedcba9876543210", "b"],
      ]),
      problems: [],
    });
    expect(
      problems(["--auth-tokens", "a=0123456789abcdef", "--admin-tokens", "ops=0123456789abcdef,=x"]),
    ).toEqual([
      "--admin-tokens entry 2: expected tenant=token",
      "--admin-tokens (tenant ops): the same token as --auth-tokens' tenant a; operators need tokens of their own",
    ]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
