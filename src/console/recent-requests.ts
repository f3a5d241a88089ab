// The web console's list of recent requests: the summaries of the generations that finished last,
// kept in the front end's memory (never the prompt or the output text).
import { createContextKey } from "@connectrpc/connect";
import type { FinishReason } from "../../gen/kvpark/v1/inference_pb.js";
import type { CacheReport, Timings, Usage } from "../engine-ipc.js";

/** How many finished generations the console keeps, of all tenants together. */
export const RECENT_REQUESTS_MAX = 100;

/** The API a generation was asked through (see RequestApi in console.proto). */
export type CallApi = "grpc" | "openai" | "anthropic";

/** The summary of one finished generation. */
export interface FinishedRequest {
  /** When it finished, epoch milliseconds. */
  finishedAt: number;
  tenant: string;
  api: CallApi;
  finishReason: FinishReason;
  usage: Usage;
  cache: CacheReport;
  timings: Timings;
}

/** One generation on its way to the list: what it learns at its start, then at its end. */
export interface RequestRecorder {
  started(cache: CacheReport): void;
  finished(finishReason: FinishReason, usage: Usage, timings: Timings): void;
}

const NO_CACHE: CacheReport = {
  ramTokens: 0,
  ssdTokens: 0,
  sharedTokens: 0,
  recomputedTokens: 0,
  recomputeChosenTokens: 0,
  corruptBlocks: 0,
  divergedTokens: 0,
};

/** A bounded ring of the generations that finished last; the oldest goes when a new one comes. */
export class RecentRequests {
  private readonly ring: FinishedRequest[] = [];
  /** Where the next one goes once the ring is full. */
  private next = 0;

  constructor(readonly capacity = RECENT_REQUESTS_MAX) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity ${capacity}`);
  }

  /** A recorder for one generation of `tenant`; only a finished one is added. */
  begin(tenant: string, api: CallApi): RequestRecorder {
    let cache = NO_CACHE;
    return {
      started: (report) => (cache = { ...report }),
      finished: (finishReason, usage, timings) =>
        this.add({
          finishedAt: Date.now(),
          tenant,
          api,
          finishReason,
          usage: { ...usage },
          cache,
          timings: { ...timings },
        }),
    };
  }

  add(request: FinishedRequest): void {
    if (this.ring.length < this.capacity) this.ring.push(request);
    else this.ring[this.next] = request;
    this.next = (this.next + 1) % this.capacity;
  }

  /** Newest first: every tenant's when `allTenants`, else only `tenant`'s. */
  list(tenant: string, allTenants: boolean): FinishedRequest[] {
    const out: FinishedRequest[] = [];
    for (let i = 1; i <= this.ring.length; i++) {
      const r = this.ring[(this.next - i + this.ring.length) % this.ring.length];
      if (allTenants || r.tenant === tenant) out.push(r);
    }
    return out;
  }
}

/**
 * The API a generation is asked through, in its call's context values: "grpc" unless the HTTP API
 * that makes the call context says otherwise.
 */
export const callApiKey = createContextKey<CallApi>("grpc", { description: "API of the call" });
