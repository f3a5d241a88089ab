import { KvparkError } from "../errors";

/** Stable error codes of the block store; the gRPC layer maps these, never messages. */
export const STORE_ERROR_CODES = [
  "KV_NOT_FOUND",
  "KV_CORRUPT",
  "KV_CAPACITY",
  "KV_IO",
  "KV_LOCKED",
  "KV_FORMAT",
  "KV_CLOSED",
] as const;

/** One of STORE_ERROR_CODES. */
export type StoreErrorCode = (typeof STORE_ERROR_CODES)[number];

/** The one error type the store throws for operating errors; `code` is stable. */
export class StoreError extends KvparkError<StoreErrorCode> {
  constructor(code: StoreErrorCode, message: string) {
    super(code, message);
    this.name = "StoreError";
  }
}

// Numeric codes of the native core (kvstore::Code), index = value.
const NATIVE_CODES: readonly (StoreErrorCode | "OK")[] = ["OK", ...STORE_ERROR_CODES];

/** Maps a native numeric result code to its name; unknown numbers are a programmer error. */
export function codeFromNative(value: number): StoreErrorCode | "OK" {
  const code = NATIVE_CODES[value];
  if (code === undefined) throw new Error(`native store returned unknown code ${value}`);
  return code;
}

/** True for the codes defined above. */
export function isStoreErrorCode(value: unknown): value is StoreErrorCode {
  return typeof value === "string" && (STORE_ERROR_CODES as readonly string[]).includes(value);
}
