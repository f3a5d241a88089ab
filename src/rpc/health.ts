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
  private closing = false;
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

  /** Marks the server as shutting down: NOT_SERVING from now on, and Watch streams end. */
  shutdown(): void {
    this.closing = true;
    this.set(false);
    this.emit("shutdown");
  }

  get isClosing(): boolean {
    return this.closing;
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
      if (readiness.isClosing) return;
      // Sends the current status, then one message per change, until the client goes away or the
      // server shuts down (so that open watches do not hold a graceful shutdown for its whole grace).
      const stop = new AbortController();
      const onShutdown = () => stop.abort();
      const onCancel = () => stop.abort();
      readiness.once("shutdown", onShutdown);
      ctx.signal.addEventListener("abort", onCancel, { once: true });
      try {
        for await (const _ of on(readiness, "change", { signal: stop.signal })) {
          const next = readiness.status(req.service) ?? Status.SERVICE_UNKNOWN;
          if (next !== last) yield response(next);
          last = next;
          if (readiness.isClosing) return;
        }
      } catch (err) {
        if (stop.signal.aborted) return;
        throw err;
      } finally {
        readiness.off("shutdown", onShutdown);
        ctx.signal.removeEventListener("abort", onCancel);
      }
    },
  });
}
