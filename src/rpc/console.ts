import type { ConnectRouter } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ConsoleService, RequestApi, type RecentRequestSchema } from "../../gen/kvpark/v1/console_pb.js";
import type { CallApi, FinishedRequest } from "../console/recent-requests.js";
import { KvparkError } from "../errors.js";
import { adminKey, tenantKey } from "../frontend/auth.js";
import type { RpcDeps } from "./deps.js";

const apis: Record<CallApi, RequestApi> = {
  grpc: RequestApi.GRPC,
  openai: RequestApi.OPENAI,
  anthropic: RequestApi.ANTHROPIC,
};

function recentRequest(
  r: FinishedRequest,
  withTenant: boolean,
): MessageInitShape<typeof RecentRequestSchema> {
  return {
    finishedAt: timestampFromMs(r.finishedAt),
    tenant: withTenant ? r.tenant : "",
    api: apis[r.api],
    finishReason: r.finishReason,
    usage: r.usage,
    cache: r.cache,
    timings: r.timings,
  };
}

/** kvpark.v1.ConsoleService: what the web console (--console) reads besides Stats. */
export function registerConsole(router: ConnectRouter, deps: RpcDeps): void {
  router.service(ConsoleService, {
    recentRequests: (_req, ctx) => {
      const recent = deps.recentRequests;
      if (!recent)
        throw new KvparkError(
          "FAILED_PRECONDITION",
          "the web console is off: start kvpark with --console to keep recent requests",
        );
      // A tenant sees its own requests; an operator (or anyone, without tokens) every tenant's.
      const all = ctx.values.get(adminKey);
      return {
        requests: recent.list(ctx.values.get(tenantKey), all).map((r) => recentRequest(r, all)),
        capacity: recent.capacity,
        allTenants: all,
      };
    },
  });
}
