import { Code, ConnectError, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";

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
