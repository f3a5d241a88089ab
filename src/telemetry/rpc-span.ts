import {
  isSpanContextValid,
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

/**
 * The trace_id and span_id a request's log line carries, so that a log store can jump to its trace; none
 * when there is no span or it is not traced (telemetry off, or metrics only).
 */
export function traceFields(span: Span | undefined): { trace_id?: string; span_id?: string } {
  const ids = span?.spanContext();
  if (!ids || !isSpanContextValid(ids)) return {};
  return { trace_id: ids.traceId, span_id: ids.spanId };
}

/**
 * A SERVER span for a call of the HTTP APIs (OpenAI, Anthropic), continuing the caller's W3C trace
 * context, named as the HTTP conventions name it ("POST /v1/chat/completions"). The generation it runs
 * becomes its child, as a Generate call's is of its RPC span.
 */
export function startHttpSpan(
  tracer: Tracer,
  method: string,
  route: string,
  headers: Record<string, string | string[] | undefined>,
): Span {
  const parent = propagation.extract(ROOT_CONTEXT, headers, {
    get: (carrier, key) => {
      const v = carrier[key];
      return Array.isArray(v) ? v[0] : v;
    },
    keys: (carrier) => Object.keys(carrier),
  });
  return tracer.startSpan(
    `${method} ${route}`,
    {
      kind: SpanKind.SERVER,
      attributes: { [sc.ATTR_HTTP_REQUEST_METHOD]: method, [sc.ATTR_HTTP_ROUTE]: route },
    },
    parent,
  );
}

/** Ends an HTTP API call's span with its response status; 5xx marks it failed. */
export function endHttpSpan(span: Span, status: number): void {
  span.setAttribute(sc.ATTR_HTTP_RESPONSE_STATUS_CODE, status);
  if (status >= 500) {
    span.setAttribute(sc.ATTR_ERROR_TYPE, String(status));
    span.setStatus({ code: SpanStatusCode.ERROR });
  }
  span.end();
}

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
