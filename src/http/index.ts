// The HTTP APIs served on the gRPC port beside Connect and gRPC-Web.
import type { Config } from "../config.js";
import type { Authenticator } from "../frontend/auth.js";
import type { RpcDeps } from "../rpc/deps.js";
import type { HttpRoute } from "./api.js";
import { anthropicRoutes } from "./anthropic.js";
import { openAiRoutes } from "./openai.js";

export { findRoute, type HttpRoute } from "./api.js";

/** Every route of the HTTP APIs. */
export function httpRoutes(deps: RpcDeps, auth: Authenticator, config: Config): HttpRoute[] {
  return [...openAiRoutes(deps, auth, config), ...anthropicRoutes(deps, auth, config)];
}
