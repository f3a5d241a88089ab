import pino from "pino";

/** The process's structured JSON logger (one JSON object per line on stdout). */
export type Logger = pino.Logger;

/** Creates the logger; `level` comes from --log-level. */
export function createLogger(level: string, name = "kvpark"): Logger {
  return pino({ name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
