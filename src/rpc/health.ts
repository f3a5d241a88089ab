import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { EventEmitter, on } from "node:events";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Status,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb.js";

/** Serving state of the process, shared by the health service and the engine host. */
export class Readiness extends EventEmitter {
  private serving = false;
  private readonly services: Set<string>;

  constructor(services: string[]) {
    super();
    this.services = new Set(["", ...services]);
  }

  /** Whether requests that need the engine can be served. */
  get isServing(): boolean {
    return this.serving;
  }

  set(serving: boolean): void {
    if (serving === this.serving) return;
    this.serving = serving;
    this.emit("change", serving);
  }

  /** The status of one service name ("" is the whole server); undefined for unknown names. */
  status(service: string): Status | undefined {
    if (!this.services.has(service)) return undefined;
    return this.serving ? Status.SERVING : Status.NOT_SERVING;
  }
}

function response(status: Status): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status });
}

/** grpc.health.v1.Health: Check and Watch over the Readiness state. */
export function registerHealth(router: ConnectRouter, readiness: Readiness): void {
  router.service(Health, {
    check(req) {
      const status = readiness.status(req.service);
      if (status === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return response(status);
    },
    async *watch(req, ctx) {
      let last = readiness.status(req.service) ?? Status.SERVICE_UNKNOWN;
      yield response(last);
      // Sends the current status, then one message per change, until the client goes away.
      try {
        for await (const _ of on(readiness, "change", { signal: ctx.signal })) {
          const next = readiness.status(req.service) ?? Status.SERVICE_UNKNOWN;
          if (next !== last) yield response(next);
          last = next;
        }
      } catch (err) {
        if (ctx.signal.aborted) return;
        throw err;
      }
    },
  });
}
