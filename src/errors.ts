import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Every stable error code kvpark's rooms throw, with the gRPC status it surfaces as. The code is the
 * contract (tests, logs and clients match on it); the message is for people. Each room throws a
 * subclass of KvparkError narrowed to its own codes.
 */
export const ERROR_CODES = {
  // A request and its serving
  INVALID_ARGUMENT: Code.InvalidArgument,
  OUT_OF_RANGE: Code.OutOfRange,
  NOT_FOUND: Code.NotFound,
  FAILED_PRECONDITION: Code.FailedPrecondition,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
  UNAUTHENTICATED: Code.Unauthenticated,
  ENGINE_UNAVAILABLE: Code.Unavailable,
  CANCELLED: Code.Canceled,
  DEADLINE_EXCEEDED: Code.DeadlineExceeded,
  INTERNAL: Code.Internal,
  // The model directory and its tokenizer (ModelError, TokenizerError, SafetensorsError)
  MODEL_FILE_MISSING: Code.FailedPrecondition,
  MODEL_UNSUPPORTED: Code.FailedPrecondition,
  MODEL_INVALID: Code.FailedPrecondition,
  SAFETENSORS_INVALID: Code.FailedPrecondition,
  CHAT_TEMPLATE_MISSING: Code.FailedPrecondition,
  CHAT_TEMPLATE_FAILED: Code.InvalidArgument,
  // The SSD block store (StoreError)
  KV_NOT_FOUND: Code.NotFound,
  KV_CORRUPT: Code.DataLoss,
  KV_CAPACITY: Code.ResourceExhausted,
  KV_IO: Code.Unavailable,
  KV_LOCKED: Code.FailedPrecondition,
  KV_FORMAT: Code.FailedPrecondition,
  KV_CLOSED: Code.Unavailable,
  // One block refused (BlockError; named after the proto enum BlockErrorCode). The status is the
  // one a PutBlocks call fails with when every block it sent was refused for this reason.
  CORRUPT: Code.InvalidArgument,
  UNSUPPORTED_VERSION: Code.InvalidArgument,
  MODEL_MISMATCH: Code.FailedPrecondition,
  KEY_MISMATCH: Code.InvalidArgument,
  SHAPE_MISMATCH: Code.InvalidArgument,
  INVALID_PAYLOAD: Code.InvalidArgument,
  PARENT_MISSING: Code.FailedPrecondition,
  CAPACITY: Code.ResourceExhausted,
  // The server's configuration (ConfigError; reported at start, never over gRPC)
  CONFIG_INVALID: Code.InvalidArgument,
} as const satisfies Record<string, Code>;

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

/**
 * Maps any error to a ConnectError by ERROR_CODES. kvpark's errors keep their message; anything else
 * becomes INTERNAL with a generic message so internals (paths, stack traces) never reach clients.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof KvparkError) {
    const code: ErrorCode = err.code;
    if (code !== "INTERNAL") return new ConnectError(err.message, ERROR_CODES[code]);
  }
  // The cause stays on the error for the request log; the client sees only a generic message.
  return new ConnectError("internal error; see the server log", Code.Internal, undefined, undefined, err);
}
