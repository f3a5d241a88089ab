// The HTTP APIs served on the gRPC port beside Connect and gRPC-Web.
import type { Config } from "../config.js";
import type { Authenticator } from "../frontend/auth.js";
import type { Logger } from "../log.js";
import type { RpcDeps } from "../rpc/deps.js";
import { traceFields } from "../telemetry/rpc-span.js";
import { httpCall, type HttpCall, type HttpRoute } from "./api.js";
import { anthropicRoutes } from "./anthropic.js";
import { openAiRoutes } from "./openai.js";

export { findRoute, type HttpRoute } from "./api.js";

/** Every route of the HTTP APIs, each call traced (telemetry on) and logged as the RPCs are. */
export function httpRoutes(
  deps: RpcDeps & { log?: Logger },
  auth: Authenticator,
  config: Config,
): HttpRoute[] {
  return [...openAiRoutes(deps, auth, config), ...anthropicRoutes(deps, auth, config)].map((route) =>
    observed(route, deps),
  );
}

/**
 * A route whose calls get a SERVER span and one log line in the shape of the RPCs' ("request done",
 * with trace_id and span_id when traced), written when the response has ended.
 */
function observed(route: HttpRoute, deps: RpcDeps & { log?: Logger }): HttpRoute {
  return {
    // Read through: a route's path may be a getter (GET /v1/models/{the model served now}).
    get method() {
      return route.method;
    },
    get path() {
      return route.path;
    },
    handle: async (req, res) => {
      const started = performance.now();
      const traced = deps.telemetry?.httpSpan(route.method, route.path, req.headers);
      const call: HttpCall = { span: traced?.span };
      let failed: unknown;
      try {
        await httpCall.run(call, () => route.handle(req, res));
      } catch (err) {
        failed = err;
        throw err; // the server answers 500 and logs the cause
      } finally {
        const status = failed === undefined ? res.statusCode : 500;
        traced?.end(status);
        const line = {
          event: "http",
          method: `${route.method} ${route.path}`,
          code: status,
          ms: Math.round((performance.now() - started) * 10) / 10,
          tenant: call.tenant || undefined,
          ...traceFields(call.span),
        };
        deps.log?.info(line, status < 400 ? "request done" : "request failed");
      }
    },
  };
}
