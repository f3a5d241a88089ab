import type { Code } from "@connectrpc/connect";

/**
 * Every stable error code kvpark's rooms throw, with the gRPC status it surfaces as (by the name of
 * Connect's `Code`, so that the engine process and the store need no RPC library). The code is the
 * contract (tests, logs and clients match on it); the message is for people. Each room throws a
 * subclass of KvparkError narrowed to its own codes.
 */
export const ERROR_CODES = {
  // A request and its serving
  INVALID_ARGUMENT: "InvalidArgument",
  OUT_OF_RANGE: "OutOfRange",
  NOT_FOUND: "NotFound",
  FAILED_PRECONDITION: "FailedPrecondition",
  RESOURCE_EXHAUSTED: "ResourceExhausted",
  UNAUTHENTICATED: "Unauthenticated",
  ENGINE_UNAVAILABLE: "Unavailable",
  CANCELLED: "Canceled",
  DEADLINE_EXCEEDED: "DeadlineExceeded",
  INTERNAL: "Internal",
  // The model directory and its tokenizer (ModelError, TokenizerError, SafetensorsError)
  MODEL_FILE_MISSING: "FailedPrecondition",
  MODEL_UNSUPPORTED: "FailedPrecondition",
  MODEL_INVALID: "FailedPrecondition",
  SAFETENSORS_INVALID: "FailedPrecondition",
  CHAT_TEMPLATE_MISSING: "FailedPrecondition",
  CHAT_TEMPLATE_FAILED: "InvalidArgument",
  // The SSD block store (StoreError)
  KV_NOT_FOUND: "NotFound",
  KV_CORRUPT: "DataLoss",
  KV_CAPACITY: "ResourceExhausted",
  KV_IO: "Unavailable",
  KV_LOCKED: "FailedPrecondition",
  KV_FORMAT: "FailedPrecondition",
  KV_CLOSED: "Unavailable",
  // One block refused (BlockError; named after the proto enum BlockErrorCode). The status is the
  // one a PutBlocks call fails with when every block it sent was refused for this reason.
  CORRUPT: "InvalidArgument",
  UNSUPPORTED_VERSION: "InvalidArgument",
  MODEL_MISMATCH: "FailedPrecondition",
  KEY_MISMATCH: "InvalidArgument",
  SHAPE_MISMATCH: "InvalidArgument",
  INVALID_PAYLOAD: "InvalidArgument",
  PARENT_MISSING: "FailedPrecondition",
  CAPACITY: "ResourceExhausted",
  // The server's configuration (ConfigError; reported at start, never over gRPC)
  CONFIG_INVALID: "InvalidArgument",
} as const satisfies Record<string, keyof typeof Code>;

/** One of ERROR_CODES. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** True for the codes of ERROR_CODES (for codes that crossed a process boundary as strings). */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && Object.hasOwn(ERROR_CODES, value);
}

/** The base of every error kvpark throws on purpose: a stable code and a message safe to show a client. */
export class KvparkError<C extends ErrorCode = ErrorCode> extends Error {
  constructor(
    readonly code: C,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "KvparkError";
  }
}

/** Shorthand for the most common client error: a field that is missing or wrong. */
export function invalidField(field: string, problem: string): KvparkError {
  return new KvparkError("INVALID_ARGUMENT", `${field}: ${problem}`);
}

/** Turns any thrown value into a KvparkError: kvpark's own kept, an abort CANCELLED, anything else INTERNAL. */
export function toKvparkError(err: unknown): KvparkError {
  if (err instanceof KvparkError) return err;
  const e = err as { message?: unknown; name?: unknown };
  if (e?.name === "AbortError") return new KvparkError("CANCELLED", "cancelled");
  return new KvparkError("INTERNAL", typeof e?.message === "string" ? e.message : String(err), {
    cause: err,
  });
}
