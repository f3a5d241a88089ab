import { FinishReason } from "../../gen/kvpark/v1/inference_pb";
import type { CacheReport, Timings } from "../engine-ipc";
import { RecentRequests } from "./recent-requests";

const cache: CacheReport = {
  ramTokens: 64,
  ssdTokens: 128,
  sharedTokens: 0,
  recomputedTokens: 9,
  recomputeChosenTokens: 0,
  corruptBlocks: 0,
  divergedTokens: 0,
};
const timings: Timings = {
  ttftMs: 12.5,
  lookupMs: 0.5,
  restoreMs: 3,
  prefillMs: 7,
  decodeTokensPerSecond: 40,
  totalMs: 100,
  queueMs: 0,
};

/** Records a finished generation of `tenant` whose prompt has `promptTokens` tokens. */
function finish(recent: RecentRequests, tenant: string, promptTokens: number): void {
  const r = recent.begin(tenant, "openai");
  r.started(cache);
  r.finished(FinishReason.MAX_TOKENS, { promptTokens, completionTokens: 4, cachedTokens: 192 }, timings);
}

describe("RecentRequests", () => {
  it("keeps what a generation reported at its start and its end, newest first", () => {
    const recent = new RecentRequests(4);
    const before = Date.now();
    finish(recent, "a", 201);
    finish(recent, "a", 202);
    const list = recent.list("a", false);
    expect(list.map((r) => r.usage.promptTokens)).toEqual([202, 201]);
    expect(list[0]).toEqual({
      finishedAt: expect.any(Number),
      tenant: "a",
      api: "openai",
      finishReason: FinishReason.MAX_TOKENS,
      usage: { promptTokens: 202, completionTokens: 4, cachedTokens: 192 },
      cache,
      timings,
    });
    expect(list[0].finishedAt).toBeGreaterThanOrEqual(before);
  });

  it("adds nothing for a generation that did not finish", () => {
    const recent = new RecentRequests(4);
    recent.begin("a", "grpc").started(cache);
    expect(recent.list("a", true)).toEqual([]);
  });

  it("drops the oldest once full, and shows a tenant only its own", () => {
    const recent = new RecentRequests(3);
    for (let i = 1; i <= 7; i++) finish(recent, i % 2 ? "odd" : "even", i);
    expect(recent.list("", true).map((r) => r.usage.promptTokens)).toEqual([7, 6, 5]);
    expect(recent.list("odd", false).map((r) => r.usage.promptTokens)).toEqual([7, 5]);
    expect(recent.list("even", false).map((r) => r.usage.promptTokens)).toEqual([6]);
    expect(recent.list("nobody", false)).toEqual([]);
  });

  it("refuses a capacity that is not a positive integer", () => {
    expect(() => new RecentRequests(0)).toThrow(RangeError);
    expect(() => new RecentRequests(1.5)).toThrow(RangeError);
  });
});
