import * as fs from "node:fs";
import * as path from "node:path";
import * as tls from "node:tls";
import { parseArgs } from "node:util";
import { findJemalloc } from "./engine/allocator";
import { KvparkError } from "./errors";
import { PRESETS } from "./model-gen/presets";
import { parseOrigins } from "./origins";

export { parseOrigins } from "./origins";
import type { Config } from "./config-fields";
import { options, type Option } from "./config-options.js";

export * from "./config-fields";

const MiB = 1024 * 1024;

/** A configuration that could not be used; the message says what is wrong and which flag fixes it. */
export class ConfigError extends KvparkError<"CONFIG_INVALID"> {
  constructor(readonly problems: string[]) {
    super("CONFIG_INVALID", problems.join("\n"));
    this.name = "ConfigError";
  }
}

// Sizes are parsed here rather than with the `bytes` package, which reads KB as 1024 and knows no
// KiB, or its fork `bytes-iec`, which throws on "1ib" and rounds fractions down silently: the whole
// parser is a table and a regular expression. BigInt keeps 1.1GB exact.
const BYTE_UNITS = new Map<string, bigint>([
  ["b", 1n],
  ["kb", 10n ** 3n],
  ["mb", 10n ** 6n],
  ["gb", 10n ** 9n],
  ["tb", 10n ** 12n],
  ["pb", 10n ** 15n],
  ["kib", 1n << 10n],
  ["mib", 1n << 20n],
  ["gib", 1n << 30n],
  ["tib", 1n << 40n],
  ["pib", 1n << 50n],
]);

/**
 * A size as the byte options take it: a whole number of bytes, or a number with a unit, binary
 * (KiB, MiB, GiB, TiB, PiB: powers of 1024) or decimal (KB, MB, GB, TB, PB: powers of 1000), in any
 * case and with or without a space: `2GiB`, `1.5 GiB`, `512MiB`, `2GB`, `1048576`.
 */
export function parseBytes(text: string): { bytes: number } | { problem: string } {
  const m = /^\s*(\d+)(?:\.(\d+))?\s*([a-z]*)\s*$/i.exec(text);
  const unit = m?.[3] ? BYTE_UNITS.get(m[3].toLowerCase()) : 1n;
  if (!m || unit === undefined)
    return {
      problem: `expected a size such as 512MiB, 1.5GiB or 2GB (KiB, MiB, GiB, TiB: powers of 1024; KB, MB, GB, TB: powers of 1000) or a number of bytes, got "${text}"`,
    };
  const fraction = m[2] ?? "";
  const scaled = BigInt(m[1] + fraction) * unit;
  const divisor = 10n ** BigInt(fraction.length);
  if (scaled % divisor !== 0n) return { problem: `"${text}" is not a whole number of bytes` };
  return { bytes: Number(scaled / divisor) };
}

// Largest first; of two units of about the same size, the binary one.
const UNITS_SHOWN = (["PiB", "PB", "TiB", "TB", "GiB", "GB", "MiB", "MB", "KiB", "KB"] as const).map(
  (name) => [name, BYTE_UNITS.get(name.toLowerCase())!] as const,
);

/** A byte count as people read it: in the largest unit that shows it exactly in two decimals. */
export function formatBytes(n: number): string {
  if (!Number.isSafeInteger(n)) return String(n);
  const b = BigInt(n);
  for (const [name, size] of UNITS_SHOWN)
    if (b >= size && (b * 100n) % size === 0n) return `${Number((b * 100n) / size) / 100} ${name}`;
  return String(n);
}

function parseValue(opt: Option<keyof Config>, raw: string, source: string, problems: string[]): unknown {
  switch (opt.kind) {
    case "string":
      return raw;
    case "bool":
      if (["1", "true", "yes", "on", ""].includes(raw.toLowerCase())) return true;
      if (["0", "false", "no", "off"].includes(raw.toLowerCase())) return false;
      problems.push(`${source}: expected true or false, got "${raw}" (set ${opt.flag}=true|false)`);
      return opt.default;
    case "enum":
      if (!opt.choices!.includes(raw)) {
        problems.push(`${source}: "${raw}" is not one of ${opt.choices!.join(", ")} (set ${opt.flag})`);
        return opt.default;
      }
      return raw;
    case "int": {
      if (!/^-?\d+$/.test(raw)) {
        problems.push(`${source}: expected a whole number, got "${raw}" (set ${opt.flag})`);
        return opt.default;
      }
      const n = Number(raw);
      if ((opt.min !== undefined && n < opt.min) || (opt.max !== undefined && n > opt.max)) {
        problems.push(`${source}: ${n} is outside ${opt.min}..${opt.max} (set ${opt.flag})`);
        return opt.default;
      }
      return n;
    }
    case "bytes": {
      const size = parseBytes(raw);
      if ("problem" in size) {
        problems.push(`${source}: ${size.problem} (set ${opt.flag})`);
        return opt.default;
      }
      const n = size.bytes;
      if ((opt.min !== undefined && n < opt.min) || (opt.max !== undefined && n > opt.max)) {
        const range = `${formatBytes(opt.min ?? 0)}..${formatBytes(opt.max ?? Number.MAX_SAFE_INTEGER)}`;
        problems.push(`${source}: ${raw.trim()} is outside ${range} (set ${opt.flag})`);
        return opt.default;
      }
      return n;
    }
  }
}

/** Every option's default, straight from the table. */
export const CONFIG_DEFAULTS: Readonly<Config> = Object.freeze(
  Object.fromEntries(options.map((o) => [o.key, o.default])) as unknown as Config,
);

/** The bounds the table gives an integer option. */
export function optionRange(key: keyof Config): { min: number; max: number } {
  const opt = options.find((o) => o.key === key);
  if (opt?.kind !== "int" && opt?.kind !== "bytes") throw new Error(`${key} is not an integer option`);
  return { min: opt.min ?? Number.MIN_SAFE_INTEGER, max: opt.max ?? Number.MAX_SAFE_INTEGER };
}

/** Parses flags and KVPARK_* variables (flags win) into a validated Config. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  const config = { ...CONFIG_DEFAULTS };
  const set = (opt: Option<keyof Config>, raw: string, source: string) => {
    (config as Record<string, unknown>)[opt.key] = parseValue(opt, raw, source, problems);
  };
  for (const opt of options) {
    const raw = env[opt.env];
    if (raw !== undefined) set(opt, raw, opt.env);
  }
  // Non-strict parsing hands back every token, so that all problems are reported at once, each in
  // the table's own words, instead of parseArgs stopping at the first.
  const { tokens } = parseArgs({
    args: argv,
    options: Object.fromEntries(
      options.map((o) => [o.flag.slice(2), { type: o.kind === "bool" ? "boolean" : "string" } as const]),
    ),
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  for (const token of tokens) {
    if (token.kind === "option-terminator") continue;
    if (token.kind === "positional") {
      problems.push(`unknown option ${token.value} (see --help)`);
      continue;
    }
    const opt = options.find((o) => o.flag === token.rawName);
    const arg = token.inlineValue ? `${token.rawName}=${token.value}` : token.rawName;
    if (!opt) problems.push(`unknown option ${arg} (see --help)`);
    else if (token.value !== undefined) set(opt, token.value, opt.flag);
    else if (opt.kind === "bool") set(opt, "true", opt.flag);
    else problems.push(`${opt.flag} needs a value`);
  }
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey))
    problems.push("--tls-cert and --tls-key must be set together");
  if (config.tlsCa && !config.tlsCert)
    problems.push("--tls-ca (mTLS) needs TLS: set --tls-cert and --tls-key too");
  if (config.ssdBytesMax > 0 && config.ssdBytesMax < 256 * MiB)
    problems.push(
      `--ssd-bytes-max (${formatBytes(config.ssdBytesMax)}) must be 0 (no SSD tier) or at least 256 MiB`,
    );
  if (config.maxTokensDefault > config.maxTokensLimit)
    problems.push(
      `--max-tokens-default (${config.maxTokensDefault}) exceeds --max-tokens-limit (${config.maxTokensLimit})`,
    );
  if (config.softPinTtlSeconds > config.softPinTtlMaxSeconds)
    problems.push(
      `--soft-pin-ttl-seconds (${config.softPinTtlSeconds}) exceeds --soft-pin-ttl-max-seconds (${config.softPinTtlMaxSeconds})`,
    );
  problems.push(...parseSharedTier(config.sharedTier).problems);
  problems.push(...parseOrigins(config.corsOrigins).problems);
  problems.push(...machineProblems(config));
  if (problems.length) throw new ConfigError(problems);
  config.dataDir = path.resolve(config.dataDir);
  return config;
}

/**
 * The addresses of --shared-tier, and what is wrong with them: each a redis:// or rediss:// URL with
 * a host (the port defaults to 6379), all with the same scheme.
 */
export function parseSharedTier(spec: string): { urls: string[]; problems: string[] } {
  const urls: string[] = [];
  const problems: string[] = [];
  if (!spec.trim()) return { urls, problems };
  for (const raw of spec.split(",").map((s) => s.trim())) {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      problems.push(`--shared-tier: "${raw}" is not a URL; expected redis://host:port`);
      continue;
    }
    if (url.protocol !== "redis:" && url.protocol !== "rediss:")
      problems.push(`--shared-tier: "${raw}" is not a redis:// or rediss:// address`);
    else if (!url.hostname) problems.push(`--shared-tier: "${raw}" names no host`);
    else if (url.pathname.length > 1 && !/^\/\d{1,2}$/.test(url.pathname))
      problems.push(`--shared-tier: "${raw}": the path may only name a database number`);
    else urls.push(url.toString());
  }
  if (new Set(urls.map((u) => new URL(u).protocol)).size > 1)
    problems.push("--shared-tier: mix of redis:// and rediss:// addresses; use one scheme");
  return { urls, problems };
}

/** What is wrong with a file an option names, or undefined when it is a readable file. */
function unreadable(file: string): string | undefined {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return fs.statSync(file).isFile() ? undefined : "not a file";
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : String(e);
  }
}

/**
 * Names of the models kvpark generates itself, as generate.ts's presetNames() lists them (config.spec.ts
 * checks that they agree): generate.ts loads MLX, which the front end never loads.
 */
function presetNames(): string[] {
  return Object.keys(PRESETS).flatMap((p) => [p, `${p}-4bit`, `${p}-sharded`]);
}

/**
 * Problems only the machine shows: files and a model directory that do not exist, tokens that
 * cannot be used. Checked with the arguments, so that `kvpark serve` exits 2 before it listens
 * instead of failing once it serves.
 */
function machineProblems(config: Config): string[] {
  const problems: string[] = [];
  const model = config.model;
  const isDir = fs.existsSync(model) && fs.statSync(model).isDirectory();
  if (!isDir && !presetNames().includes(model))
    problems.push(`--model ${model}: no such directory, and not a preset (${presetNames().join(", ")})`);
  const tlsFiles = (["tlsCert", "tlsKey", "tlsCa"] as const).filter((k) => config[k]);
  const tlsProblems = tlsFiles.flatMap((k) => {
    const problem = unreadable(config[k]);
    return problem ? [`${flagOf(k)} ${config[k]}: ${problem}`] : [];
  });
  problems.push(...tlsProblems);
  if (config.engineAllocator === "jemalloc" && !findJemalloc())
    problems.push(
      "--engine-allocator jemalloc: libjemalloc.so.2 not found; install it (apt-get install libjemalloc2) or use --engine-allocator system",
    );
  if (!tlsProblems.length && config.tlsCert && config.tlsKey) {
    // What the server would do when it listens, so that a bad PEM or a key that is not the
    // certificate's is a configuration error, not a stack trace.
    try {
      tls.createSecureContext({
        cert: fs.readFileSync(config.tlsCert),
        key: fs.readFileSync(config.tlsKey),
        ca: config.tlsCa ? fs.readFileSync(config.tlsCa) : undefined,
      });
    } catch (e) {
      const flags = config.tlsCa ? "--tls-cert, --tls-key, --tls-ca" : "--tls-cert, --tls-key";
      problems.push(`${flags}: not a usable certificate and key (${(e as Error).message})`);
    }
  }
  const auth = parseTokens(config.authTokens, "--auth-tokens");
  const admin = parseTokens(config.adminTokens, "--admin-tokens");
  problems.push(...auth.problems, ...admin.problems);
  for (const [token, tenant] of admin.tokens)
    if (auth.tokens.has(token))
      problems.push(
        `--admin-tokens (tenant ${tenant}): the same token as --auth-tokens' tenant ${auth.tokens.get(token)}; operators need tokens of their own`,
      );
  return problems;
}

function flagOf(key: keyof Config): string {
  return options.find((o) => o.key === key)!.flag;
}

/** Shortest bearer token --auth-tokens and --admin-tokens accept, so that tokens cannot be guessed. */
export const TOKEN_CHARS_MIN = 16;

/**
 * The tokens of --auth-tokens or --admin-tokens (named by `flag`), token → tenant: `tenant=token`
 * pairs separated by commas, or `@file` with one pair per line (blank lines and `#` comments are
 * skipped); and what is wrong with them, never quoting a token.
 */
export function parseTokens(spec: string, flag: string): { tokens: Map<string, string>; problems: string[] } {
  const tokens = new Map<string, string>();
  const problems: string[] = [];
  if (!spec) return { tokens, problems };
  let text = spec.replace(/,/g, "\n");
  let where = (i: number) => `${flag} entry ${i + 1}`;
  if (spec.startsWith("@")) {
    const file = spec.slice(1);
    const problem = unreadable(file);
    if (problem) return { tokens, problems: [`${flag} ${spec}: ${problem}`] };
    text = fs.readFileSync(file, "utf8");
    where = (i) => `${flag} ${spec} line ${i + 1}`;
  }
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    const tenant = line.slice(0, eq).trim();
    const token = line.slice(eq + 1).trim();
    if (eq <= 0 || !tenant || !token) problems.push(`${where(i)}: expected tenant=token`);
    else if (token.length < TOKEN_CHARS_MIN)
      problems.push(
        `${where(i)} (tenant ${tenant}): the token has ${token.length} characters; tokens need at least ${TOKEN_CHARS_MIN}`,
      );
    else if (/\s/.test(token)) problems.push(`${where(i)} (tenant ${tenant}): the token contains a space`);
    else if (tokens.has(token))
      problems.push(`${where(i)} (tenant ${tenant}): the same token as tenant ${tokens.get(token)}`);
    else tokens.set(token, tenant);
  }
  return { tokens, problems };
}

/** An option's default as --help and the README show it: sizes in units. */
function shown(o: Option<keyof Config>): string {
  return o.kind === "bytes" ? formatBytes(o.default as number) : String(o.default);
}

/** The `--help` text of `kvpark serve`. */
export function configHelp(): string {
  const rows = options.map((o) => {
    const def = o.default === "" ? "" : ` (default: ${shown(o)})`;
    return `  ${o.flag.padEnd(28)} ${o.env}\n      ${o.help}${def}`;
  });
  return rows.join("\n");
}

/** Markdown table of every option, for the README. */
export function configMarkdown(): string {
  const lines = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"];
  for (const o of options)
    lines.push(
      `| \`${o.flag}\` | \`${o.env}\` | ${o.default === "" ? "" : `\`${shown(o)}\``} | ${o.help.replace(/\|/g, "\\|")} |`,
    );
  return lines.join("\n");
}
