// The Anthropic-compatible Messages API on the gRPC port: POST /v1/messages (streamed as server-sent
// events or not) and POST /v1/messages/count_tokens, with Anthropic's headers and error shape. A
// request becomes a kvpark GenerateRequest run through `generate`, so every check, the cache, tool
// parsing and constrained decoding are those of Generate over gRPC; cache_control breakpoints pin
// the prompt's prefix up to their block once the generation has finished.
import { randomBytes } from "node:crypto";
import type * as http from "node:http";
import { Code } from "@connectrpc/connect";
import type { Config } from "../config.js";
import type { PinHint } from "../engine-ipc.js";
import { KvparkError } from "../errors.js";
import { DEFAULT_TENANT, type Authenticator, type Caller } from "../frontend/auth.js";
import { toConnectError } from "../rpc/call-end.js";
import { served, type RpcDeps } from "../rpc/deps.js";
import { generate } from "../rpc/inference.js";
import { quoted } from "../rpc/validation.js";
import {
  bearerToken,
  callValues,
  clientGone,
  HttpError,
  readJson,
  sendJson,
  writeEvent,
  type HttpRequest,
  type HttpResponse,
  type HttpRoute,
} from "./api.js";
import { foldMessage, MessageEvents, type AnthropicEvent } from "./anthropic-events.js";
import {
  anthropicFields,
  breakpointPrefixes,
  chatPrompt,
  generateRequest,
  promptIds,
} from "./anthropic-chat.js";
import { parseMessagesRequest } from "./anthropic-request.js";

/** Anthropic's error type of each status it answers with. */
const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  500: "api_error",
  529: "overloaded_error",
};

/** The status of a kvpark error by its gRPC code; anything else is a 500. */
const CODE_STATUS: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 400,
  [Code.OutOfRange]: 400,
  [Code.FailedPrecondition]: 400,
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.NotFound]: 404,
  [Code.ResourceExhausted]: 429,
  // The engine is starting or restarting: Anthropic's "overloaded", which clients retry.
  [Code.Unavailable]: 529,
};

/** Any error as Anthropic's status, error type and message. */
export function anthropicError(err: unknown): { status: number; type: string; message: string } {
  if (err instanceof HttpError) {
    const status = ERROR_TYPES[err.status] ? err.status : err.status >= 500 ? 500 : 400;
    return { status, type: err.type ?? ERROR_TYPES[status], message: err.message };
  }
  const ce = toConnectError(err);
  const status = CODE_STATUS[ce.code] ?? 500;
  return { status, type: ERROR_TYPES[status], message: ce.rawMessage };
}

function errorBody(err: unknown, requestId: string) {
  const { status, type, message } = anthropicError(err);
  return { status, body: { type: "error" as const, error: { type, message }, request_id: requestId } };
}

function header(req: HttpRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** The caller an `x-api-key` or `authorization: Bearer` names; everyone is the default tenant without tokens. */
function authenticate(req: HttpRequest, auth: Authenticator): Caller {
  if (!auth.enabled) return { tenant: DEFAULT_TENANT, admin: true };
  const token = header(req, "x-api-key") || bearerToken(req);
  const fail = (message: string) => new HttpError(401, message, "authentication_error");
  if (!token) throw fail("missing API key: send x-api-key: <token> or authorization: Bearer <token>");
  const caller = auth.resolve(token);
  if (!caller) throw fail("invalid API key");
  return caller;
}

/** Runs `fn`, giving kvpark errors the request's field names (paths[k]: where chat message k came from). */
async function named<T>(paths: readonly string[], fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof KvparkError) throw new KvparkError(err.code, anthropicFields(err.message, paths));
    throw err;
  }
}

const id = (prefix: string) => `${prefix}_${randomBytes(12).toString("hex")}`;

/** A checked request for the served model, as a chat prompt. */
async function prepare(deps: RpcDeps, req: HttpRequest, config: Config, forGeneration: boolean) {
  const body = await readJson(req, config.messageBytesMax);
  const r = parseMessagesRequest(body, config, forGeneration);
  const { info, tokenizer, encoder } = served(deps);
  if (r.model !== info.name)
    throw new HttpError(
      404,
      `model: unknown model ${quoted(r.model)}; this server serves ${JSON.stringify(info.name)}`,
      "not_found_error",
    );
  return { r, info, tokenizer, encoder, ...chatPrompt(r) };
}

async function pinPrefixes(deps: RpcDeps, tenant: string, prefixes: { tokens: number[]; pin: PinHint }[]) {
  for (const p of prefixes) {
    try {
      await deps.engine.pin(tenant, { tokens: p.tokens }, p.pin, AbortSignal.timeout(60_000));
    } catch {
      // As Generate's own pin: a pin over the tenant's quota does not fail a request that succeeded.
    }
  }
}

/** Writes one server-sent event, waiting while the client reads slower than the model writes. */
async function send(res: HttpResponse, ev: AnthropicEvent | { type: "error" }, signal: AbortSignal) {
  await writeEvent(res, `event: ${ev.type}\ndata: ${JSON.stringify(ev)}\n\n`, signal);
}

/** What the API's handlers serve with. */
interface Api {
  deps: RpcDeps;
  auth: Authenticator;
  config: Config;
}

/** One authenticated call. */
interface Call {
  caller: Caller;
  req: HttpRequest;
  res: HttpResponse;
  requestId: string;
}

/** POST /v1/messages. */
async function messages({ deps, config }: Api, { caller, req, res, requestId }: Call): Promise<void> {
  const { r, info, tokenizer, encoder, chat, paths } = await prepare(deps, req, config, true);
  const signal = clientGone(req, res);
  const prefixes = config.cache ? await named(paths, () => breakpointPrefixes(r, chat, encoder, info)) : [];
  const request = generateRequest(r, chat);
  const mapper = new MessageEvents(id("msg"), r.stop, config.cache, (ids) =>
    tokenizer.decode(ids, { skipSpecialTokens: true }),
  );
  const events = (async function* () {
    for await (const res of generate(deps, request, { values: callValues(caller, "anthropic"), signal })) {
      // The generation's blocks are in the cache once it has finished: pin before the answer ends.
      if (res.event.case === "finished") await pinPrefixes(deps, caller.tenant, prefixes);
      yield* mapper.map(res);
    }
  })();
  const it = events[Symbol.asyncIterator]();
  const next = () => named(paths, () => it.next());
  try {
    if (!r.stream) {
      const all: AnthropicEvent[] = [];
      for (let n = await next(); !n.done; n = await next()) all.push(n.value);
      sendJson(res, 200, foldMessage(all), { "request-id": requestId });
      return;
    }
    // Errors before the first event (the request's checks) are answered with their status.
    let n = await next();
    (res as http.ServerResponse).writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "request-id": requestId,
    });
    try {
      for (; !n.done; n = await next()) await send(res, n.value, signal);
    } catch (err) {
      if (!signal.aborted) await send(res, errorBody(err, requestId).body, signal).catch(() => {});
      throw err;
    }
    res.end();
  } catch (err) {
    // A client that went away has nobody to answer, and nothing to log.
    if (!signal.aborted) throw err;
    res.end();
  }
}

/** POST /v1/messages/count_tokens: the prompt tokens a generation of the same body would see. */
async function countTokens({ deps, config }: Api, { req, res, requestId }: Call): Promise<void> {
  const { info, encoder, chat, paths } = await prepare(deps, req, config, false);
  const ids = await named(paths, () => promptIds(chat, encoder, info));
  sendJson(res, 200, { input_tokens: ids.length }, { "request-id": requestId });
}

type Handler = (api: Api, call: Call) => Promise<void>;

/** Authenticates, and answers any error in Anthropic's shape (a stream that has started just ends). */
function route(path: string, handler: Handler, api: Api): HttpRoute {
  return {
    method: "POST",
    path,
    async handle(req, res) {
      const requestId = id("req");
      try {
        await handler(api, { caller: authenticate(req, api.auth), req, res, requestId });
      } catch (err) {
        const { status, body } = errorBody(err, requestId);
        if (res.headersSent) res.end();
        else sendJson(res, status, body, { "request-id": requestId });
        // The cause of an internal error goes to the server's log (the route's caller logs what it throws).
        if (status === 500) throw err;
      }
    },
  };
}

/** The Anthropic Messages API's routes. */
export function anthropicRoutes(deps: RpcDeps, auth: Authenticator, config: Config): HttpRoute[] {
  const api = { deps, auth, config };
  return [route("/v1/messages", messages, api), route("/v1/messages/count_tokens", countTokens, api)];
}
