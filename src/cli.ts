#!/usr/bin/env node
import { ConfigError, configHelp, loadConfig } from "./config.js";

/** Exit codes of the kvpark command. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

const USAGE = `kvpark: KV-cache-persisting LLM inference over gRPC

Usage: kvpark <command> [options]

Commands:
  serve            Run the gRPC server (gRPC, gRPC-Web and Connect on one port).
  model generate   Write a seeded random-weight model in the Hugging Face layout.
  cache            Inspect and manage a server's prefix cache: stats, ls, evict, clear, export,
                   import, verify (export and verify also offline, on a stopped server's --data-dir).
  help             Show this text; \`kvpark <command> --help\` shows a command's options.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "help" || command === "--help" || command === "-h") {
    console.log(USAGE);
    return command ? EXIT.ok : EXIT.usage;
  }
  switch (command) {
    case "serve": {
      if (rest.includes("--help") || rest.includes("-h")) {
        console.log(
          `Usage: kvpark serve [options]\n\nEvery option can also be set by its environment variable; flags win.\n` +
            `Sizes take a unit: KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000),\n` +
            `as in 2GiB, 1.5GiB or 512MiB; a plain number is bytes.\n` +
            `A bad value exits 2 before the server listens, naming the flag.\n\n${configHelp()}`,
        );
        return EXIT.ok;
      }
      const config = loadConfig(rest);
      const { serve } = await import("./frontend/serve.js");
      await serve(config);
      return -1; // keeps running until a signal
    }
    case "model": {
      const { modelCommand } = await import("./commands/model.js");
      return modelCommand(rest);
    }
    case "cache": {
      const { cacheCommand } = await import("./commands/cache.js");
      return cacheCommand(rest);
    }
    default:
      console.error(`kvpark: unknown command "${command}"\n\n${USAGE}`);
      return EXIT.usage;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err) => {
    if (err instanceof ConfigError) {
      console.error(`kvpark: invalid configuration:\n  ${err.problems.join("\n  ")}`);
      process.exitCode = EXIT.usage;
    } else {
      console.error(`kvpark: ${(err as Error).stack ?? err}`);
      process.exitCode = EXIT.failure;
    }
  },
);
