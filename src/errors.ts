import { Code, ConnectError } from "@connectrpc/connect";

/** Stable error codes of kvpark's domain; one place (toConnectError) maps them to gRPC status codes. */
export type ErrorCode =
  | "INVALID_ARGUMENT"
  | "OUT_OF_RANGE"
  | "NOT_FOUND"
  | "FAILED_PRECONDITION"
  | "RESOURCE_EXHAUSTED"
  | "UNAUTHENTICATED"
  | "ENGINE_UNAVAILABLE"
  | "CANCELLED"
  | "DEADLINE_EXCEEDED"
  | "MODEL_MISMATCH"
  | "KV_CORRUPT"
  | "KV_CAPACITY"
  | "KV_IO"
  | "INTERNAL";

const grpcCodes: Record<ErrorCode, Code> = {
  INVALID_ARGUMENT: Code.InvalidArgument,
  OUT_OF_RANGE: Code.OutOfRange,
  NOT_FOUND: Code.NotFound,
  FAILED_PRECONDITION: Code.FailedPrecondition,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
  UNAUTHENTICATED: Code.Unauthenticated,
  ENGINE_UNAVAILABLE: Code.Unavailable,
  CANCELLED: Code.Canceled,
  DEADLINE_EXCEEDED: Code.DeadlineExceeded,
  MODEL_MISMATCH: Code.FailedPrecondition,
  KV_CORRUPT: Code.DataLoss,
  KV_CAPACITY: Code.ResourceExhausted,
  KV_IO: Code.Unavailable,
  INTERNAL: Code.Internal,
};

/** An error with a stable code, safe to show to a client. */
export class KvparkError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "KvparkError";
  }
}

/** Shorthand for the most common client error: a field that is missing or wrong. */
export function invalidField(field: string, problem: string): KvparkError {
  return new KvparkError("INVALID_ARGUMENT", `${field}: ${problem}`);
}

/**
 * Stable codes of the errors kvpark's rooms throw (model loader, tokenizer, SSD store), as the
 * domain code they surface as. Their messages are written for users, so they pass through.
 */
const roomCodes: Record<string, ErrorCode> = {
  MODEL_FILE_MISSING: "FAILED_PRECONDITION",
  MODEL_UNSUPPORTED: "FAILED_PRECONDITION",
  MODEL_INVALID: "FAILED_PRECONDITION",
  CHAT_TEMPLATE_MISSING: "FAILED_PRECONDITION",
  CHAT_TEMPLATE_FAILED: "INVALID_ARGUMENT",
  KV_NOT_FOUND: "NOT_FOUND",
  KV_CORRUPT: "KV_CORRUPT",
  KV_CAPACITY: "KV_CAPACITY",
  KV_IO: "KV_IO",
  KV_LOCKED: "FAILED_PRECONDITION",
  KV_FORMAT: "FAILED_PRECONDITION",
  KV_CLOSED: "ENGINE_UNAVAILABLE",
};

/** Turns any thrown value into a KvparkError: domain codes kept, anything unknown INTERNAL. */
export function toKvparkError(err: unknown): KvparkError {
  if (err instanceof KvparkError) return err;
  const e = err as { code?: unknown; message?: unknown; name?: unknown };
  if (typeof e?.code === "string" && e.code in roomCodes)
    return new KvparkError(roomCodes[e.code], String(e.message));
  if (e?.name === "AbortError") return new KvparkError("CANCELLED", "cancelled");
  return new KvparkError("INTERNAL", typeof e?.message === "string" ? e.message : String(err));
}

/**
 * Maps any error to a ConnectError. Domain errors keep their message; anything else becomes INTERNAL
 * with a generic message so internals (paths, stack traces) never reach clients.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = err instanceof KvparkError || !(err as { code?: unknown })?.code ? err : toKvparkError(err);
  if (e instanceof KvparkError && e.code !== "INTERNAL")
    return new ConnectError(e.message, grpcCodes[e.code]);
  // The cause stays on the error for the request log; the client sees only a generic message.
  return new ConnectError("internal error; see the server log", Code.Internal, undefined, undefined, err);
}
