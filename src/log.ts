import pino from "pino";

/** The process's structured logger: JSON lines on stdout, or readable lines when stdout is a terminal. */
export type Logger = pino.Logger;

/** How log lines are written: one JSON object per line, or pino-pretty's readable lines. */
export type LogFormat = "json" | "pretty";

/**
 * Creates the logger; `level` comes from --log-level. A person at a terminal gets readable lines; a
 * pipe, a file or a container runtime's log driver gets JSON, which log stores parse. The formatter
 * runs in this thread and writes synchronously, so that lines keep their order with console output
 * and nothing is lost at exit.
 */
export function createLogger(
  level: string,
  name = "kvpark",
  format: LogFormat = process.stdout.isTTY ? "pretty" : "json",
): Logger {
  const options: pino.LoggerOptions = {
    name,
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (format === "json") return pino(options);
  // Loaded only for a terminal: servers writing JSON never load the formatter.
  const pretty = require("pino-pretty") as typeof import("pino-pretty");
  return pino(
    options,
    pretty.build({
      sync: true,
      singleLine: true,
      translateTime: "SYS:HH:MM:ss.l",
      ignore: "pid,hostname,name",
    }),
  );
}
