// The command line of `kvpark cache`: its usage text, its flags and their checks.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { BlockSelectorSchema } from "../../gen/kvpark/v1/kvblocks_pb.js";

/** The `--help` text of `kvpark cache`. */
export const USAGE = `Usage: kvpark cache <command> [options]

Against a running server (--url, --token):
  stats                   The cache's numbers (KVBlocks Stats), as JSON.
  ls [--all]              The cached blocks, one line each: key, tiers, tokens, bytes, pin, last use.
                          --all: every tenant's, with the tenant (operators).
  evict SELECTION [--tier ram|ssd|both] [--force]
                          Remove blocks from a tier (default both); pinned ones only with --force.
  clear [--all]           Remove every block of the tenant (--all: of every tenant; operators).
  export FILE [SELECTION] [--tenant NAME]
                          Write a bundle of the tenant's blocks (or the selected ones) to FILE.
  import FILE [--tenant NAME]
                          Store the blocks of a bundle; --tenant (operators) names their tenant.
  verify [FILE]           Read every block of the tenant through Export and check it;
                          with FILE, check a bundle file instead (no server needed).

Against a stopped server's data directory (--data-dir DIR, the server's --data-dir):
  verify --data-dir DIR   Check every block of the SSD store (checksums, format, keys).
  export FILE --data-dir DIR [--tenant NAME] [--block-tokens N]
                          Write a bundle of a tenant's blocks (default: the tenant of a server
                          without authentication) from the SSD store.

SELECTION: --key HEX (repeatable), --prompt TEXT, or --tokens ID,ID,...
Options:
  --url URL               Server address (default $KVPARK_URL or http://127.0.0.1:50051).
  --token TOKEN           Bearer token (default $KVPARK_TOKEN).
  --tenant NAME           Operators: the tenant to export or import under.
  --all                   Operators: every tenant (ls, clear).
  --json                  ls: one JSON object per block.
  --page-size N           ls: blocks per ListBlocks call (default 100).

Exit codes: 0 success, 1 failure (a refused call, damage found), 2 bad usage.`;

const COMMANDS = ["stats", "ls", "evict", "clear", "export", "import", "verify"] as const;
type Command = (typeof COMMANDS)[number];

const VALUE_FLAGS = [
  "--url",
  "--token",
  "--tenant",
  "--data-dir",
  "--key",
  "--prompt",
  "--tokens",
  "--tier",
  "--page-size",
  "--block-tokens",
] as const;
const BOOLEAN_FLAGS = ["--all", "--force", "--json"] as const;

/** Which flags each command takes (besides --url and --token for the online ones). */
const ALLOWED: Record<Command, readonly string[]> = {
  stats: [],
  ls: ["--all", "--json", "--page-size"],
  evict: ["--key", "--prompt", "--tokens", "--tier", "--force"],
  clear: ["--all"],
  export: ["--key", "--prompt", "--tokens", "--tenant", "--data-dir", "--block-tokens"],
  import: ["--tenant"],
  verify: ["--data-dir"],
};

/** A command line that cannot be run; reported with exit code 2. */
export class UsageError extends Error {}

/** A parsed command line: the command, its positional arguments, flag values and boolean flags. */
export interface Args {
  command: Command;
  positional: string[];
  values: Map<string, string[]>;
  flags: Set<string>;
}

/** Parses `kvpark cache` arguments, refusing unknown commands and flags the command does not take. */
export function parse(argv: string[]): Args {
  const [command, ...rest] = argv;
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw new UsageError(command ? `unknown command "${command}"` : "name a command");
  }
  const args: Args = { command: command as Command, positional: [], values: new Map(), flags: new Set() };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    if ((VALUE_FLAGS as readonly string[]).includes(name)) {
      const value = eq > 0 && arg.startsWith("--") ? arg.slice(eq + 1) : rest[++i];
      if (value === undefined) throw new UsageError(`${name} needs a value`);
      args.values.set(name, [...(args.values.get(name) ?? []), value]);
    } else if ((BOOLEAN_FLAGS as readonly string[]).includes(arg)) {
      args.flags.add(arg);
    } else if (arg.startsWith("-")) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      args.positional.push(arg);
    }
  }
  const offline = args.values.has("--data-dir");
  const allowed = new Set([...ALLOWED[args.command], ...(offline ? [] : ["--url", "--token"])]);
  for (const name of [...args.values.keys(), ...args.flags]) {
    if (!allowed.has(name))
      throw new UsageError(
        name === "--data-dir"
          ? `cache ${args.command} runs against a running server only: give --url, not --data-dir`
          : `cache ${args.command} does not take ${name}${offline ? " with --data-dir" : ""}`,
      );
  }
  for (const [name, values] of args.values) {
    if (values.length > 1 && name !== "--key") throw new UsageError(`${name} given twice`);
  }
  return args;
}

/** The value of a flag, or undefined when it is not given. */
export function value(args: Args, name: string): string | undefined {
  return args.values.get(name)?.[0];
}

/** The blocks a command's --key, --prompt or --tokens select; undefined when none is given. */
export function selection(args: Args): MessageInitShape<typeof BlockSelectorSchema> | undefined {
  const given = ["--key", "--prompt", "--tokens"].filter((f) => args.values.has(f));
  if (given.length > 1) throw new UsageError(`choose one of ${given.join(", ")}`);
  const keys = args.values.get("--key");
  if (keys) {
    const bad = keys.find((k) => !/^[0-9a-fA-F]{64}$/.test(k));
    if (bad !== undefined) throw new UsageError(`--key ${bad.slice(0, 20)}: a block key is 64 hex digits`);
    return { target: { case: "keys", value: { keys: keys.map((k) => Buffer.from(k, "hex")) } } };
  }
  const prompt = value(args, "--prompt");
  if (prompt !== undefined)
    return { target: { case: "prompt", value: { kind: { case: "text", value: prompt } } } };
  const tokens = value(args, "--tokens");
  if (tokens !== undefined) {
    const ids = tokens.split(",").map((t) => Number(t.trim()));
    if (ids.length === 0 || !ids.every((id) => Number.isInteger(id) && id >= 0 && id <= 0xffffffff)) {
      throw new UsageError("--tokens: token ids separated by commas");
    }
    return { target: { case: "prompt", value: { kind: { case: "tokens", value: { ids } } } } };
  }
  return undefined;
}

/** A flag's whole number from 1 to max, or fallback when it is not given. */
export function count(args: Args, name: string, fallback: number, max: number): number {
  const raw = value(args, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > max)
    throw new UsageError(`${name}: a whole number from 1 to ${max}`);
  return n;
}

/** The command's FILE argument, if any; a missing one is a usage error when required. */
export function file(args: Args, required: boolean): string | undefined {
  if (args.positional.length > 1) throw new UsageError(`unexpected argument ${args.positional[1]}`);
  const f = args.positional[0];
  if (required && f === undefined) throw new UsageError(`cache ${args.command} needs a FILE`);
  return f;
}
