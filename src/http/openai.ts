// The OpenAI-compatible API on the gRPC port: POST /v1/chat/completions, POST /v1/completions,
// GET /v1/models and GET /v1/models/{served model}. Each request becomes a kvpark GenerateRequest and
// runs through `generate`, so its checks, the prefix cache, tool-call parsing and constrained decoding
// are those of Generate over gRPC.
import type * as http from "node:http";
import type { Config } from "../config.js";
import { DEFAULT_TENANT, type Authenticator, type Caller } from "../frontend/auth.js";
import { served, type RpcDeps } from "../rpc/deps.js";
import { generate } from "../rpc/inference.js";
import { quoted } from "../rpc/quote.js";
import { bearerToken, callValues, clientGone, readJson, sendJson, writeEvent } from "./api.js";
import type { HttpRequest, HttpResponse, HttpRoute } from "./api.js";
import { OpenAiError, renderError, type FieldNames } from "./openai-errors.js";
import { chatRequest, textRequest } from "./openai-request.js";
import { Responder, type Endpoint } from "./openai-response.js";

/** The caller a request's `Authorization: Bearer <key>` names; 401 for a missing or wrong key. */
function authenticate(auth: Authenticator, req: HttpRequest): Caller {
  if (!auth.enabled) return { tenant: DEFAULT_TENANT, admin: true };
  const refuse = (message: string) =>
    new OpenAiError(401, message, "invalid_request_error", null, "invalid_api_key");
  const token = bearerToken(req);
  if (!token)
    throw refuse(
      "missing API key: send the header Authorization: Bearer <key>, with a token of --auth-tokens",
    );
  const caller = auth.resolve(token);
  if (!caller) throw refuse("invalid API key");
  return caller;
}

/** Writes an error response, or the error event of a stream already under way, and ends it. */
function answerError(res: HttpResponse, err: unknown, names?: FieldNames): void {
  const rendered = renderError(err, names);
  if (!res.headersSent) {
    const auth: Record<string, string> = rendered.status === 401 ? { "www-authenticate": "Bearer" } : {};
    sendJson(res, rendered.status, rendered.body, { ...rendered.headers, ...auth });
  } else if (!res.writableEnded) {
    (res as http.ServerResponse).end(`data: ${JSON.stringify(rendered.body)}\n\n`);
  }
  // The cause of an internal error goes to the server's log (the route's caller logs what it throws).
  if (rendered.internal !== undefined) throw rendered.internal;
}

/** Writes one server-sent event, waiting while the client is slow to read. */
async function send(res: HttpResponse, data: unknown, signal: AbortSignal): Promise<void> {
  const text = typeof data === "string" ? data : JSON.stringify(data);
  await writeEvent(res, `data: ${text}\n\n`, signal);
}

/** The model a request names must be the served one (or be left out): 404 as OpenAI answers it. */
function checkModel(model: unknown, served: string): void {
  if (model === undefined || model === null || model === "" || model === served) return;
  const name = typeof model === "string" ? quoted(model) : JSON.stringify(model)?.slice(0, 40);
  throw new OpenAiError(
    404,
    `The model ${name} does not exist; this server serves "${served}"`,
    "invalid_request_error",
    "model",
    "model_not_found",
  );
}

/** POST /v1/chat/completions and /v1/completions: one generation, whole or streamed. */
async function complete(
  deps: RpcDeps,
  config: Config,
  endpoint: Endpoint,
  caller: Caller,
  req: HttpRequest,
  res: HttpResponse,
): Promise<void> {
  const body = await readJson(req, config.messageBytesMax);
  const { info } = served(deps);
  checkModel(body.model, info.name);
  const parsed = endpoint === "chat" ? chatRequest(body) : textRequest(body);
  const signal = clientGone(req, res);
  const responder = new Responder(endpoint, info, parsed.includeUsage);
  const events = generate(deps, parsed.request, { values: callValues(caller, "openai"), signal });
  try {
    // The request's checks run before its first event: they fail with a status, not in a stream.
    let next = await events.next();
    if (!parsed.stream) {
      for (; !next.done; next = await events.next()) responder.push(next.value.event);
      sendJson(res, 200, responder.whole());
      return;
    }
    (res as http.ServerResponse).writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    });
    for (const chunk of responder.opening()) await send(res, chunk, signal);
    for (; !next.done; next = await events.next()) {
      for (const chunk of responder.push(next.value.event)) await send(res, chunk, signal);
      if (signal.aborted) {
        await events.return(undefined);
        return;
      }
    }
    await send(res, "[DONE]", signal);
    res.end();
  } catch (err) {
    // A client that went away hears nothing more.
    if (signal.aborted) return void res.end();
    answerError(res, err, parsed.names);
  }
}

/** OpenAI's model object for the served model. */
function modelObject(deps: RpcDeps, created: number): object {
  const { info } = served(deps);
  return { id: info.name, object: "model", created, owned_by: "kvpark" };
}

/** The routes of the OpenAI-compatible API. */
export function openAiRoutes(deps: RpcDeps, auth: Authenticator, config: Config): HttpRoute[] {
  const created = Math.floor(Date.now() / 1000);
  const route = (
    method: HttpRoute["method"],
    path: string,
    serve: (caller: Caller, req: HttpRequest, res: HttpResponse) => Promise<void>,
  ): HttpRoute => ({
    method,
    path,
    handle: async (req, res) => {
      try {
        await serve(authenticate(auth, req), req, res);
      } catch (err) {
        answerError(res, err);
      }
    },
  });
  const model = route("GET", "", async (_caller, _req, res) =>
    sendJson(res, 200, modelObject(deps, created)),
  );
  return [
    route("POST", "/v1/chat/completions", (caller, req, res) =>
      complete(deps, config, "chat", caller, req, res),
    ),
    route("POST", "/v1/completions", (caller, req, res) => complete(deps, config, "text", caller, req, res)),
    route("GET", "/v1/models", async (_caller, _req, res) =>
      sendJson(res, 200, { object: "list", data: [modelObject(deps, created)] }),
    ),
    // Routes match exact paths: this one's is the served model's, once the engine has loaded it.
    Object.defineProperty(model, "path", {
      get: () => `/v1/models/${encodeURIComponent(deps.engine.info?.name ?? "\0")}`,
    }),
  ];
}
