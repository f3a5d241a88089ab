import { ConfigError, loadConfig, parseOrigins } from "./config";

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
});
