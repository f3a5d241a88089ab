import * as fs from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { DescFile } from "@bufbuild/protobuf";
import { file_grpc_health_v1_health } from "../../gen/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { file_grpc_reflection_v1alpha_reflection } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_kvpark_v1_inference } from "../../gen/kvpark/v1/inference_pb.js";
import { file_kvpark_v1_kvblocks } from "../../gen/kvpark/v1/kvblocks_pb.js";
import { file_kvpark_v1_model } from "../../gen/kvpark/v1/model_pb.js";
import { file_kvpark_v1_console } from "../../gen/kvpark/v1/console_pb.js";
import { authInterceptor, Authenticator, parseAuthTokens, tenantKey } from "./auth.js";
import { corsStep } from "./cors.js";
import { consoleFiles } from "../console/static.js";
import { ConfigError, type Config } from "../config.js";
import type { Logger } from "../log.js";
import { errorInterceptor, observeCallEnd } from "../rpc/call-end.js";
import type { RpcDeps } from "../rpc/deps.js";
import { registerHealth, type Readiness } from "../rpc/health.js";
import { registerInference } from "../rpc/inference.js";
import { registerKVBlocks } from "../rpc/kvblocks.js";
import { registerModel } from "../rpc/model.js";
import { registerConsole } from "../rpc/console.js";
import { ReflectionIndex, registerReflection } from "../rpc/reflection.js";
import { findRoute, httpRoutes } from "../http/index.js";
import { rpcSpanKey, traceFields } from "../telemetry/rpc-span.js";
import { checkRequestWire, unknownMethod } from "./wire-checks.js";

/** Fully qualified names of the services this server exposes. */
export const SERVICE_NAMES = [
  "kvpark.v1.InferenceService",
  "kvpark.v1.KVBlocksService",
  "kvpark.v1.ModelService",
  "kvpark.v1.ConsoleService",
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
];

const DESCRIPTOR_FILES: DescFile[] = [
  file_kvpark_v1_inference,
  file_kvpark_v1_kvblocks,
  file_kvpark_v1_model,
  file_kvpark_v1_console,
  file_grpc_health_v1_health,
  file_grpc_reflection_v1_reflection,
  file_grpc_reflection_v1alpha_reflection,
];

/** Everything the RPC handlers depend on. */
export interface ServerDeps extends RpcDeps {
  log: Logger;
  readiness: Readiness;
  registerExtra?: (router: ConnectRouter) => void;
  /** Frees what only calls use (the tokenizer's worker threads); shutdown calls it once every call has ended. */
  close?: () => Promise<void>;
}

// Health checks stay open without a token so that load balancers and Kubernetes probes, which cannot
// send credentials, can use them; they reveal nothing but serving state.
const UNAUTHENTICATED_SERVICES = new Set(["grpc.health.v1.Health"]);

function loggingInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const method = `${req.service.typeName}/${req.method.name}`;
    const done = (err?: unknown) => {
      const code = err === undefined ? "ok" : Code[ConnectError.from(err).code];
      const line = {
        event: "rpc",
        method,
        code,
        ms: Math.round((performance.now() - started) * 10) / 10,
        tenant: req.contextValues.get(tenantKey) || undefined,
        // The tracing interceptor, outermost, has set the call's span (telemetry on).
        ...traceFields(req.contextValues.get(rpcSpanKey)),
      };
      if (err === undefined) log.info(line, "request done");
      else {
        const ce = ConnectError.from(err);
        const cause = ce.cause instanceof Error ? ce.cause.message : undefined;
        log.info({ ...line, error: ce.rawMessage, cause }, "request failed");
      }
    };
    return observeCallEnd(() => next(req), done);
  };
}

/**
 * gRPC's wire format percent-encodes only bytes outside printable ASCII (and "%") in grpc-message.
 * connect-node encodes it with encodeURIComponent, and grpc-js decodes it with decodeURI, so
 * characters like ":" "," "=" reached grpc-js clients still encoded. Re-encoding the message the way
 * the gRPC specification says makes it arrive intact in every client.
 */
function specEncodeGrpcMessage(headers: http2.OutgoingHttpHeaders | undefined): void {
  const value = headers?.["grpc-message"];
  if (typeof value !== "string") return;
  let text: string;
  try {
    text = decodeURIComponent(value);
  } catch {
    return;
  }
  headers!["grpc-message"] = Array.from(Buffer.from(text, "utf8"))
    .map((b) =>
      b >= 0x20 && b <= 0x7e && b !== 0x25
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, "0")}`,
    )
    .join("");
}

type NodeHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

function withSpecGrpcMessages(handler: NodeHandler): NodeHandler {
  return (req, res) => {
    const writeHead = res.writeHead.bind(res) as (
      status: number,
      headers?: http2.OutgoingHttpHeaders,
    ) => unknown;
    const addTrailers = res.addTrailers.bind(res) as (headers: http2.OutgoingHttpHeaders) => void;
    (res as { writeHead: unknown }).writeHead = (status: number, headers?: http2.OutgoingHttpHeaders) => {
      specEncodeGrpcMessage(headers);
      return writeHead(status, headers);
    };
    (res as { addTrailers: unknown }).addTrailers = (headers: http2.OutgoingHttpHeaders) => {
      specEncodeGrpcMessage(headers);
      addTrailers(headers);
    };
    handler(req, res);
  };
}

/** Builds the request handler (routes, interceptors, limits). Only `listen` opens sockets. */
export function buildHandler(config: Config, deps: ServerDeps, shutdownSignal: AbortSignal): NodeHandler {
  // Tracing is outermost, so that its span covers (and records the status of) calls refused by auth.
  const interceptors: Interceptor[] = [
    ...(deps.telemetry ? [deps.telemetry.interceptor()] : []),
    loggingInterceptor(deps.log),
  ];
  const authenticator = new Authenticator(
    parseAuthTokens(config.authTokens),
    parseAuthTokens(config.adminTokens, "--admin-tokens"),
  );
  if (authenticator.enabled) {
    const auth = authInterceptor(authenticator);
    interceptors.push((next) => {
      const authed = auth(next);
      return (req) => (UNAUTHENTICATED_SERVICES.has(req.service.typeName) ? next(req) : authed(req));
    });
  }
  // Innermost, so that logging and tracing see the status the client gets.
  interceptors.push(errorInterceptor());
  const reflection = new ReflectionIndex(DESCRIPTOR_FILES, SERVICE_NAMES);
  const adapter = connectNodeAdapter({
    routes: (router) => {
      registerHealth(router, deps.readiness);
      registerReflection(router, reflection);
      registerInference(router, deps);
      registerKVBlocks(router, deps);
      registerModel(router, deps);
      registerConsole(router, deps);
      deps.registerExtra?.(router);
      checkRequestWire(router, config.messageBytesMax);
    },
    fallback: unknownMethod(deps.log),
    interceptors,
    readMaxBytes: config.messageBytesMax,
    writeMaxBytes: config.messageBytesMax,
    shutdownSignal,
  });
  const grpc = withSpecGrpcMessages(adapter as NodeHandler);
  // The OpenAI- and Anthropic-compatible JSON APIs share the port; everything else is Connect's.
  const routes = httpRoutes(deps, authenticator, config);
  // The web console's page (--console): static files under its own path; its data comes over Connect.
  const consolePage = config.console ? consoleFiles() : undefined;
  const dispatch: NodeHandler = (req, res) => {
    if (consolePage?.serve(req, res)) return;
    const route = findRoute(routes, req);
    if (!route) return grpc(req, res);
    route.handle(req, res).catch((err: unknown) => {
      deps.log.error({ event: "http_error", path: route.path, err }, "HTTP API handler failed");
      if (!res.headersSent) (res as http.ServerResponse).writeHead(500);
      res.end();
    });
  };
  // Browsers (--cors-origins): before the routes, so that preflights are answered here and the
  // responses of every protocol carry the CORS headers.
  const cors = corsStep(config.corsOrigins);
  return cors ? (req, res) => cors(req, res, () => dispatch(req, res)) : dispatch;
}

/**
 * A ConfigError naming the flag that fixes a failed listen, for the failures the configuration causes
 * (the port taken, an address this machine does not have); other errors as they are.
 */
function listenError(err: Error, config: Config): Error {
  const where = `--port ${config.port} on ${config.host}`;
  switch ((err as NodeJS.ErrnoException).code) {
    case "EADDRINUSE":
      return new ConfigError([`${where} is already in use (set --port; 0 picks a free one)`]);
    case "EACCES":
      return new ConfigError([`${where}: permission denied (ports below 1024 need privileges)`]);
    case "EADDRNOTAVAIL":
      return new ConfigError([`--host ${config.host} is not an address of this machine`]);
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new ConfigError([`--host ${config.host}: no such host`]);
    default:
      return err;
  }
}

/** A listening server and the means to stop it gracefully. */
export interface RunningServer {
  port: number;
  /** Stops accepting, lets in-flight calls finish for up to `graceMs`, then cancels what is left. */
  shutdown(graceMs: number): Promise<void>;
}

/**
 * Listens on one port for gRPC, gRPC-Web and Connect. Without TLS, the first bytes of a connection
 * decide between HTTP/2 (prior knowledge, as gRPC clients speak) and HTTP/1.1 (browsers, curl); with
 * TLS, ALPN decides.
 */
export async function listen(config: Config, deps: ServerDeps): Promise<RunningServer> {
  // Node loads its fetch implementation (undici) the first time the global Headers is used, which
  // the Connect adapter does for every call: 25-30 ms here, which the first call would wait for.
  void new Headers();
  const shutdown = new AbortController();
  const handler = buildHandler(config, deps, shutdown.signal);
  const sessions = new Set<http2.Http2Session>();
  // Raw connections, so that shutdown can end the ones an HTTP/2 session no longer owns.
  const sockets = new Set<net.Socket>();
  const h2settings: http2.Settings = { maxConcurrentStreams: 1000, maxHeaderListSize: 64 * 1024 };

  let h2: http2.Http2Server | http2.Http2SecureServer;
  let front: net.Server;
  if (config.tlsCert) {
    const secure: http2.SecureServerOptions = {
      cert: fs.readFileSync(config.tlsCert),
      key: fs.readFileSync(config.tlsKey),
      allowHTTP1: true,
      settings: h2settings,
    };
    if (config.tlsCa) {
      secure.ca = fs.readFileSync(config.tlsCa);
      secure.requestCert = true;
      secure.rejectUnauthorized = true;
    }
    h2 = http2.createSecureServer(secure, handler);
    front = h2 as unknown as tls.Server;
  } else {
    h2 = http2.createServer({ settings: h2settings }, handler);
    const h1 = http.createServer(handler);
    const preface = Buffer.from("PRI * HTTP/2.0");
    front = net.createServer((socket) => {
      socket.once("readable", () => {
        const head: Buffer | null = socket.read(preface.length) ?? socket.read();
        if (!head) return socket.destroy();
        socket.unshift(head);
        (head.equals(preface.subarray(0, head.length)) ? h2 : h1).emit("connection", socket);
      });
    });
  }

  let openStreams = 0;
  h2.on("stream", (stream: http2.ServerHttp2Stream) => {
    openStreams++;
    stream.once("close", () => openStreams--);
  });
  h2.on("session", (session: http2.Http2Session) => {
    sessions.add(session);
    let timer: NodeJS.Timeout | undefined;
    if (config.keepaliveMs > 0) {
      // A client that vanished without closing its connection would hold streams forever.
      timer = setInterval(() => {
        const deadline = setTimeout(() => session.destroy(), config.keepaliveTimeoutMs);
        try {
          session.ping((err) => {
            clearTimeout(deadline);
            if (err) session.destroy();
          });
        } catch {
          clearTimeout(deadline);
        }
      }, config.keepaliveMs);
      timer.unref();
    }
    session.on("close", () => {
      clearInterval(timer);
      sessions.delete(session);
    });
  });

  front.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  front.on("secureConnection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    front.once("error", (err) => reject(listenError(err, config)));
    front.listen(config.port, config.host, () => resolve());
  });
  const port = (front.address() as net.AddressInfo).port;

  return {
    port,
    async shutdown(graceMs: number) {
      deps.readiness.shutdown();
      const closed = new Promise<void>((resolve) => front.close(() => resolve()));
      for (const s of sessions) s.close();
      const idle = async () => {
        while (openStreams > 0 || deps.admission.active > 0) await new Promise((r) => setTimeout(r, 20));
      };
      const grace = new Promise<void>((r) => setTimeout(r, graceMs).unref());
      await Promise.race([idle(), grace]);
      shutdown.abort(new ConnectError("the server is shutting down", Code.Unavailable));
      // Give cancelled handlers a moment to send their status before connections are torn down.
      await Promise.race([idle(), new Promise((r) => setTimeout(r, 1000).unref())]);
      for (const s of sessions) s.destroy();
      for (const socket of sockets) socket.destroy();
      await closed;
      await deps.close?.();
    },
  };
}
