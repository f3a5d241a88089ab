import type { Client } from "@connectrpc/connect";
import { InferenceService, type CacheReport, type GenerateRequest } from "../../gen/kvpark/v1/inference_pb";

/** What a Generate stream returned: the generated token ids and the cache report of its start. */
export interface Out {
  ids: number[];
  cache?: CacheReport;
}

/** Runs a Generate call to its end. */
export async function generate(c: Client<typeof InferenceService>, req: object): Promise<Out> {
  const out: Out = { ids: [] };
  for await (const res of c.generate(req as GenerateRequest)) {
    if (res.event.case === "started") out.cache = res.event.value.cache;
    else if (res.event.case === "delta") out.ids.push(...res.event.value.tokenIds);
  }
  return out;
}

/** n token ids below 500, different for each seed. */
export const ids = (n: number, seed: number): number[] =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % 500);

/** A greedy request over token ids. */
export const greedy = (prompt: number[], maxTokens = 6) => ({
  prompt: { kind: { case: "tokens" as const, value: { ids: prompt } } },
  sampling: { maxTokens, temperature: 0 },
});

/** A seeded sampled request over token ids that stores nothing in the cache. */
export const seeded = (prompt: number[], seed: bigint) => ({
  ...greedy(prompt),
  sampling: { maxTokens: 6, temperature: 1, seed },
  cache: { persist: false },
});
