import {
  Code,
  ConnectError,
  type Interceptor,
  type StreamResponse,
  type UnaryResponse,
} from "@connectrpc/connect";
import { ERROR_CODES, KvparkError, type ErrorCode } from "../errors.js";

// A status message travels in a header (grpc-message); clients refuse headers past a few KiB.
const STATUS_MESSAGE_CHARS_MAX = 1024;

function capped(message: string): string {
  if (message.length <= STATUS_MESSAGE_CHARS_MAX) return message;
  // Not between the two halves of a surrogate pair.
  const end =
    STATUS_MESSAGE_CHARS_MAX -
    ((message.charCodeAt(STATUS_MESSAGE_CHARS_MAX - 1) & 0xfc00) === 0xd800 ? 1 : 0);
  return `${message.slice(0, end)}… (cut)`;
}

/**
 * Maps any error to a ConnectError by ERROR_CODES. kvpark's errors keep their message (cut to
 * STATUS_MESSAGE_CHARS_MAX); anything else becomes INTERNAL with a generic message so internals
 * (paths, stack traces) never reach clients.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof KvparkError) {
    const code: ErrorCode = err.code;
    if (code !== "INTERNAL") return new ConnectError(capped(err.message), Code[ERROR_CODES[code]]);
  }
  // The cause stays on the error for the request log; the client sees only a generic message.
  return new ConnectError("internal error; see the server log", Code.Internal, undefined, undefined, err);
}

/**
 * Runs an interceptor's `next` and calls `done` exactly once when the call ends: with the error of a
 * failed call, after a unary response, when a response stream completes or fails, or when the client
 * goes away mid-stream (the stream is closed without an error; `done` then gets CANCELED).
 */
export async function observeCallEnd<T extends UnaryResponse | StreamResponse>(
  call: () => Promise<T>,
  done: (err?: unknown) => void,
): Promise<T> {
  let ended = false;
  const end = (err?: unknown) => {
    if (ended) return;
    ended = true;
    done(err);
  };
  let res: T;
  try {
    res = await call();
  } catch (err) {
    end(err);
    throw err;
  }
  if (!res.stream) {
    end();
    return res;
  }
  const inner = res.message;
  return {
    ...res,
    message: (async function* () {
      try {
        yield* inner;
        end();
      } catch (err) {
        end(err);
        throw err;
      } finally {
        end(new ConnectError("the client cancelled the call", Code.Canceled));
      }
    })(),
  };
}

/**
 * The one place handler errors become gRPC statuses: domain errors keep their code and message,
 * anything else is INTERNAL without internals, and a call whose deadline passed (or that the server
 * cancelled) reports that reason rather than whatever the aborted work threw.
 */
export function errorInterceptor(): Interceptor {
  return (next) => async (req) => {
    const map = (err: unknown) =>
      req.signal.aborted && req.signal.reason instanceof ConnectError
        ? req.signal.reason
        : toConnectError(err);
    let res;
    try {
      res = await next(req);
    } catch (err) {
      throw map(err);
    }
    if (!res.stream) return res;
    const inner = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* inner;
        } catch (err) {
          throw map(err);
        }
      })(),
    };
  };
}
