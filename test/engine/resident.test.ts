/**
 * The engine keeps its last finished sequence's KV, and a next request of the same tenant that
 * continues it (an agent's next turn) takes its buffers over instead of copying the same KV back from
 * the RAM tier. What it answers must be what a server without a cache computes, greedy and seeded,
 * whether the new prompt extends the previous turn or leaves it partway.
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService, type CacheReport, type GenerateRequest } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, type ServerProcess } from "../helpers/server";

const TOKENS = { a: "tenant-a-token-000001", b: "tenant-b-token-000001" };
const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % 500);

interface Out {
  ids: number[];
  cache?: CacheReport;
  restoreMs?: number;
  ramImportMs?: number;
}

function client(server: ServerProcess, token?: string): Client<typeof InferenceService> {
  const headers = token ? { authorization: `Bearer ${token}` } : undefined;
  return createClient(
    InferenceService,
    createGrpcTransport({
      baseUrl: server.url,
      interceptors: headers
        ? [(next) => (req) => (req.header.set("authorization", headers.authorization), next(req))]
        : [],
    }),
  );
}

async function generate(
  c: Client<typeof InferenceService>,
  prompt: number[],
  seed?: bigint,
  persist = true,
): Promise<Out> {
  const out: Out = { ids: [] };
  const sampling =
    seed === undefined ? { maxTokens: 8, temperature: 0 } : { maxTokens: 8, temperature: 0.9, seed };
  const req = { prompt: { kind: { case: "tokens", value: { ids: prompt } } }, sampling, cache: { persist } };
  for await (const res of c.generate(req as GenerateRequest)) {
    if (res.event.case === "started") out.cache = res.event.value.cache;
    else if (res.event.case === "delta") out.ids.push(...res.event.value.tokenIds);
    else if (res.event.case === "finished") {
      out.restoreMs = res.event.value.timings?.restoreMs;
      out.ramImportMs = res.event.value.timings?.restoreRamMs;
    }
  }
  return out;
}

describe("the resident sequence", () => {
  let server: ServerProcess;
  let scratch: ServerProcess;

  beforeAll(async () => {
    const auth = ["--auth-tokens", `a=${TOKENS.a},b=${TOKENS.b}`];
    [server, scratch] = await Promise.all([
      startServer({ args: [...auth, "--ssd-fsync", "none"] }),
      startServer({ args: [...auth, "--cache=false"] }),
    ]);
  });
  afterAll(() => Promise.all([server.stop(), scratch.stop()]));

  it.each([undefined, 7n])(
    "a next turn takes over the last sequence without a copy (seed %s)",
    async (seed) => {
      const a = client(server, TOKENS.a);
      const fresh = client(scratch, TOKENS.a);
      const first = ids(150, Number(seed ?? 1));
      const turn1 = await generate(a, first, seed);
      expect(turn1.ids).toEqual((await generate(fresh, first, seed)).ids);

      // The next turn carries the answer: everything but the answer's last token has KV.
      const next = [...first, ...turn1.ids, ...ids(20, 3)];
      const turn2 = await generate(a, next, seed);
      expect(turn2.cache).toMatchObject({ ramTokens: first.length + turn1.ids.length - 1, ssdTokens: 0 });
      expect(turn2.restoreMs).toBe(0);
      expect(turn2.ids).toEqual((await generate(fresh, next, seed)).ids);

      // A prompt that leaves the last turn partway (an edited history) takes over what it shares.
      const edited = [...next.slice(0, 100), ...ids(40, 4)];
      const turn3 = await generate(a, edited, seed);
      expect(turn3.cache).toMatchObject({ ramTokens: 100 });
      expect(turn3.restoreMs).toBe(0);
      expect(turn3.ids).toEqual((await generate(fresh, edited, seed)).ids);
    },
  );

  it("another tenant's request, or one after Clear, restores from the cache or computes instead", async () => {
    const prompt = ids(120, 9);
    await generate(client(server, TOKENS.a), prompt);
    // Tenant b shares nothing with tenant a: it computes everything.
    const other = await generate(client(server, TOKENS.b), [...prompt, 5]);
    expect(other.cache).toMatchObject({ ramTokens: 0, recomputedTokens: prompt.length + 1 });
    // b's sequence is resident now; a's prompt comes back from the RAM tier (a copy: restore time).
    const back = await generate(client(server, TOKENS.a), [...prompt, 5]);
    expect(back.cache!.ramTokens).toBeGreaterThan(0);
    expect(back.restoreMs).toBeGreaterThan(0);
    // A request that stores nothing ends the resident sequence too: the next turn copies from RAM.
    await generate(client(server, TOKENS.a), ids(30, 11), undefined, false);
    const copied = await generate(client(server, TOKENS.a), [...prompt, 5, 7]);
    expect(copied.cache!.ramTokens).toBeGreaterThan(0);
    expect(copied.restoreMs).toBeGreaterThan(0);
    // Clearing a's cache drops a's resident sequence with it.
    const blocks = createClient(
      KVBlocksService,
      createGrpcTransport({
        baseUrl: server.url,
        interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${TOKENS.a}`), next(req))],
      }),
    );
    await blocks.clear({});
    const cleared = await generate(client(server, TOKENS.a), [...prompt, 5, 6]);
    expect(cleared.cache).toMatchObject({ ramTokens: 0, ssdTokens: 0, recomputedTokens: prompt.length + 2 });
  });
});
