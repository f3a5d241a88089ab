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
 * Maps any error to a ConnectError. Domain errors keep their message; anything else becomes INTERNAL
 * with a generic message so internals (paths, stack traces) never reach clients.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof KvparkError) return new ConnectError(err.message, grpcCodes[err.code]);
  return new ConnectError("internal error; see the server log", Code.Internal);
}
