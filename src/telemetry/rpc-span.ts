import {
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  type Attributes,
  type Histogram,
  type Span,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { observeCallEnd } from "../rpc/call-end.js";
import { tenantKey } from "../frontend/auth.js";
import * as sc from "./semconv.js";

/**
 * The server span of the current RPC, handed from the tracing interceptor to the handler through the
 * call's context values. Handlers stream through async generators that connect drives from its own
 * async context, so the active-span context of AsyncLocalStorage would not reliably reach them.
 */
export const rpcSpanKey = createContextKey<Span | undefined>(undefined, { description: "RPC server span" });

const headerGetter: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

/** gRPC's canonical status name, e.g. INVALID_ARGUMENT, for error.type. */
export function grpcCodeName(code: number): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

// Server errors in the sense of the RPC conventions: the span is marked failed only for these; a
// client's bad argument or missing permission is the client's error, recorded by the status code.
export const SERVER_FAULTS = new Set<number>([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/**
 * Outermost interceptor: a SERVER span per RPC, continuing the caller's W3C trace context, and its
 * duration on the `rpc.server.call.duration` histogram.
 */
export function rpcInterceptor(tracer: Tracer, callDuration: Histogram): Interceptor {
  return (next) => async (req) => {
    const service = req.service.typeName;
    const method = req.method.name;
    const parent = propagation.extract(ROOT_CONTEXT, req.header, headerGetter);
    const span = tracer.startSpan(
      `${service}/${method}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          [sc.ATTR_RPC_SYSTEM]: sc.RPC_SYSTEM_GRPC,
          [sc.ATTR_RPC_SERVICE]: service,
          [sc.ATTR_RPC_METHOD]: method,
        },
      },
      parent,
    );
    req.contextValues.set(rpcSpanKey, span);
    const started = performance.now();
    const end = (err?: unknown) => {
      // 0 is OK, which connect's Code enum leaves out.
      const code: number = err === undefined ? 0 : ConnectError.from(err).code;
      const attributes: Attributes = {
        [sc.ATTR_RPC_SYSTEM]: sc.RPC_SYSTEM_GRPC,
        [sc.ATTR_RPC_SERVICE]: service,
        [sc.ATTR_RPC_METHOD]: method,
        [sc.ATTR_RPC_GRPC_STATUS_CODE]: code,
      };
      if (code !== 0) attributes[sc.ATTR_ERROR_TYPE] = grpcCodeName(code);
      callDuration.record((performance.now() - started) / 1000, attributes);
      const tenant = req.contextValues.get(tenantKey);
      span.setAttribute(sc.ATTR_RPC_GRPC_STATUS_CODE, code);
      if (tenant) span.setAttribute(sc.ATTR_KVPARK_TENANT, tenant);
      if (code !== 0) {
        span.setAttribute(sc.ATTR_ERROR_TYPE, grpcCodeName(code));
        if (SERVER_FAULTS.has(code))
          span.setStatus({ code: SpanStatusCode.ERROR, message: ConnectError.from(err).rawMessage });
      }
      span.end();
    };
    return observeCallEnd(() => next(req), end);
  };
}
