// What the HTTP APIs (OpenAI- and Anthropic-compatible JSON over HTTP/1.1 and HTTP/2) share: their
// routes beside Connect and gRPC on the one port, the request body with its size limit, and the call
// context a generation runs under. Each API writes its own error shape.
import type * as http from "node:http";
import type * as http2 from "node:http2";
import { AsyncLocalStorage } from "node:async_hooks";
import type { Span } from "@opentelemetry/api";
import { createContextValues, type ContextValues } from "@connectrpc/connect";
import { callApiKey, type CallApi } from "../console/recent-requests.js";
import { adminKey, tenantKey, type Caller } from "../frontend/auth.js";
import { rpcSpanKey } from "../telemetry/rpc-span.js";

/** A request of either HTTP version. */
export type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
/** A response of either HTTP version. */
export type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;

/** An HTTP route of one of the JSON APIs. */
export interface HttpRoute {
  method: "GET" | "POST";
  /** The exact path, e.g. "/v1/chat/completions". */
  path: string;
  /** Serves the request; answers every error itself, in its API's shape. */
  handle(req: HttpRequest, res: HttpResponse): Promise<void>;
}

/** A refusal with an HTTP status; each API renders it in its own error shape. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The API's error type or code, when the status alone does not say it. */
    readonly type?: string,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

/**
 * Reads a JSON request body of at most `limitBytes`: 413 when longer, 400 when it is not JSON or not
 * an object, 415 when it is declared as anything but JSON.
 */
export async function readJson(req: HttpRequest, limitBytes: number): Promise<Record<string, unknown>> {
  const type = String(req.headers["content-type"] ?? "application/json");
  if (!/^application\/json\b/i.test(type))
    throw new HttpError(415, `the body must be application/json, not ${type.slice(0, 60)}`);
  const declared = Number(req.headers["content-length"] ?? NaN);
  if (declared > limitBytes) throw new HttpError(413, `the body is over ${limitBytes} bytes`);
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    if (bytes > limitBytes) throw new HttpError(413, `the body is over ${limitBytes} bytes`);
    chunks.push(chunk);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch (err) {
    throw new HttpError(400, `the body is not valid JSON: ${(err as Error).message.slice(0, 100)}`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new HttpError(400, "the body must be a JSON object");
  return body as Record<string, unknown>;
}

/** Writes a JSON response. */
export function sendJson(
  res: HttpResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  (res as http.ServerResponse).writeHead(status, {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

/** The context values a generation runs under for this caller (tenant, operator or not) of `api`. */
export function callValues(caller: Caller, api: CallApi): ContextValues {
  const call = httpCall.getStore();
  if (call) call.tenant = caller.tenant;
  return createContextValues()
    .set(tenantKey, caller.tenant)
    .set(adminKey, caller.admin)
    .set(callApiKey, api)
    .set(rpcSpanKey, call?.span);
}

/** What the request log line and the generation's trace learn of an HTTP API call while it runs. */
export interface HttpCall {
  /** The call's SERVER span (telemetry on), which its generation's trace continues. */
  span?: Span;
  /** The caller's tenant, once authenticated. */
  tenant?: string;
}

/** The HTTP API call being served, set around each route's handler (see httpRoutes). */
export const httpCall = new AsyncLocalStorage<HttpCall>();

/**
 * Aborts when the client goes away before the response has ended. (An HTTP/2 stream the client
 * resets reports writableFinished but not writableEnded, so only the latter tells a cancel.)
 */
export function clientGone(_req: HttpRequest, res: HttpResponse): AbortSignal {
  const abort = new AbortController();
  res.on("close", () => {
    if (!res.writableEnded) abort.abort(new Error("the client went away"));
  });
  return abort.signal;
}

/** The route serving a request, if it is one of the HTTP APIs'. */
export function findRoute(routes: readonly HttpRoute[], req: HttpRequest): HttpRoute | undefined {
  const path = (req.url ?? "").split("?")[0];
  return routes.find((r) => r.path === path && r.method === req.method);
}

/** The token of an `authorization: Bearer <token>` header, if the request has one. */
export function bearerToken(req: HttpRequest): string | undefined {
  return /^Bearer\s+(\S+)$/i.exec(String(req.headers.authorization ?? ""))?.[1];
}

/**
 * Writes server-sent event text, waiting while the client reads slower than the model writes;
 * nothing once the client has gone (a closed HTTP/2 response throws on a write).
 */
export async function writeEvent(res: HttpResponse, text: string, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  if ((res as http.ServerResponse).write(text) || signal.aborted) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      res.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    res.on("drain", done);
    signal.addEventListener("abort", done);
  });
}
