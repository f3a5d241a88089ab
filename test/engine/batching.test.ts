import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb";
import {
  FinishReason,
  type CacheReport,
  type GenerateRequestSchema,
  type InferenceService,
} from "../../gen/kvpark/v1/inference_pb";
import { kvparkClients } from "../helpers/clients";
import { startServer, type ServerProcess } from "../helpers/server";

// A request's output must not depend on what else the engine runs at the same time: these suites run
// requests alone, then together in every way a batching engine combines them (started at once,
// joining and leaving a running batch, one member cancelled, the engine dying under a full batch),
// and compare token ids. The random-weight test model's greedy output repeats one token, so most
// requests sample with a seed, where a changed logit shows up as a different token.

type Req = MessageInitShape<typeof GenerateRequestSchema>;
type Inference = ReturnType<typeof createClient<typeof InferenceService>>;

/** What a client saw of one Generate stream; filled in as its messages arrive. */
interface Run {
  ids: number[];
  /** The kinds of the stream's messages, in order. */
  events: string[];
  finish?: FinishReason;
  completionTokens?: number;
  cache?: CacheReport;
  /** Ticks of a clock shared by every stream of this file, to compare when things happened. */
  startedTick?: number;
  endTick?: number;
}

let clock = 0;
const tick = () => ++clock;

/**
 * Starts a Generate stream: `run` fills in as messages arrive (so a failed stream still shows what it
 * got), `done` resolves with it at the end or rejects with the stream's error.
 */
function start(
  client: Inference,
  req: Req,
  opts: { signal?: AbortSignal; onDelta?: (run: Run) => void } = {},
): { run: Run; done: Promise<Run> } {
  const run: Run = { ids: [], events: [] };
  const done = (async () => {
    try {
      for await (const res of client.generate(req, { signal: opts.signal })) {
        run.events.push(res.event.case ?? "none");
        if (res.event.case === "started") {
          run.startedTick = tick();
          run.cache = res.event.value.cache;
        } else if (res.event.case === "delta") {
          run.ids.push(...res.event.value.tokenIds);
          opts.onDelta?.(run);
        } else if (res.event.case === "finished") {
          run.finish = res.event.value.finishReason;
          run.completionTokens = res.event.value.usage?.completionTokens;
        }
      }
      return run;
    } finally {
      run.endTick = tick();
    }
  })();
  return { run, done };
}

const generate = (client: Inference, req: Req) => start(client, req).done;

/** What must not change with the company a request keeps: its tokens and why it stopped. */
const output = (r: Run) => ({ ids: r.ids, finish: r.finish });

/** Runs the requests one after the other, each alone on the server. */
async function alone(client: Inference, reqs: Req[]): Promise<Run[]> {
  const runs: Run[] = [];
  for (const r of reqs) runs.push(await generate(client, r));
  return runs;
}

/** A prompt of token ids of its own: prompts of different seeds differ from their first token. */
const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 3) % 500);

const tokens = (prompt: number[]) => ({ kind: { case: "tokens" as const, value: { ids: prompt } } });
const greedy = (maxTokens: number) => ({ maxTokens, temperature: 0 });
const seeded = (maxTokens: number, seed: number) => ({
  maxTokens,
  temperature: 0.8,
  topP: 0.9,
  topK: 40,
  seed: BigInt(seed),
});

/**
 * Eight requests of mixed prompt lengths (one of exactly one cache block, several over one prefill
 * chunk) and mixed sampling, in an order that makes every group of `groups` mix short and long prompts.
 */
const MIXED: Req[] = [
  { prompt: tokens(ids(20, 1)), sampling: greedy(12) },
  { prompt: tokens(ids(400, 2)), sampling: seeded(16, 21) },
  { prompt: tokens(ids(64, 3)), sampling: seeded(14, 22) },
  { prompt: tokens(ids(330, 4)), sampling: greedy(16) },
  { prompt: tokens(ids(260, 6)), sampling: { maxTokens: 13, temperature: 0.8, topK: 20, seed: 24n } },
  { prompt: tokens(ids(45, 7)), sampling: seeded(12, 25) },
  { prompt: tokens(ids(200, 8)), sampling: { maxTokens: 15, temperature: 0.8, topP: 0.95, seed: 26n } },
  { prompt: tokens(ids(130, 5)), sampling: seeded(16, 23) },
];
const promptLength = (r: Req) => (r.prompt!.kind!.value as { ids: number[] }).ids.length;

/** Splits the indices of MIXED into groups of `size`: i with i + 4 in pairs, even and odd in fours. */
function groups(size: number): number[][] {
  const order = [0, 1, 2, 3, 4, 5, 6, 7];
  const n = order.length / size;
  return Array.from({ length: n }, (_, g) => order.filter((i) => i % n === g));
}

describe("a request's output does not depend on what else runs", () => {
  let server: ServerProcess;
  let client: Inference;
  /** The mixed requests' outputs, each computed alone on the cache-off server. */
  let mixedAlone: Promise<Run[]> | undefined;
  const aloneMixed = () => (mixedAlone ??= alone(client, MIXED));

  beforeAll(async () => {
    server = await startServer({ args: ["--cache=false"] });
    client = kvparkClients(server).inference;
  });
  afterAll(() => server?.stop());

  it("gives every request its alone output in concurrent groups of 2, 4 and 8", async () => {
    const reference = await aloneMixed();
    for (const r of reference) expect(r.finish).toBe(FinishReason.MAX_TOKENS);
    // The seeded requests really sample: their outputs are not one repeated token.
    expect(new Set(reference[1].ids).size).toBeGreaterThan(1);
    for (const size of [2, 4, 8]) {
      const runs: Run[] = new Array(MIXED.length);
      for (const group of groups(size)) {
        const together = await Promise.all(group.map((i) => generate(client, MIXED[i])));
        group.forEach((i, k) => (runs[i] = together[k]));
        // Members ran together, not one after another: some member started before another ended.
        const overlapped = together.some((a) =>
          together.some((b) => a !== b && a.startedTick! < b.endTick! && b.startedTick! < a.endTick!),
        );
        expect(overlapped).toBe(true);
      }
      expect({ size, outputs: runs.map(output) }).toEqual({ size, outputs: reference.map(output) });
    }
  });

  it("gives the cache-off alone outputs with the cache on: cold, from RAM and from SSD", async () => {
    const reference = await aloneMixed();
    const args = ["--ssd-fsync", "none", "--cost-model=false"];
    let cached = await startServer({ args });
    try {
      let c = kvparkClients(cached);
      const all = () => Promise.all(MIXED.map((r) => generate(c.inference, r)));
      const expectReference = (runs: Run[], tier: string) =>
        expect({ tier, outputs: runs.map(output) }).toEqual({ tier, outputs: reference.map(output) });
      // Every prompt but its last token (always computed, for its logits) comes from the tier.
      const reports = (from: "ramTokens" | "ssdTokens") =>
        MIXED.map((r) => ({
          ramTokens: from === "ramTokens" ? promptLength(r) - 1 : 0,
          ssdTokens: from === "ssdTokens" ? promptLength(r) - 1 : 0,
          recomputedTokens: 1,
          corruptBlocks: 0,
        }));

      const cold = await all();
      expectReference(cold, "cold");
      expect(cold.map((r) => r.cache)).toMatchObject(
        MIXED.map((r) => ({ ramTokens: 0, ssdTokens: 0, recomputedTokens: promptLength(r) })),
      );

      const ram = await all();
      expectReference(ram, "ram");
      expect(ram.map((r) => r.cache)).toMatchObject(reports("ramTokens"));

      // Once every block is on SSD, a restart on the same data directory leaves RAM empty.
      while ((await c.kv.stats({})).writeQueueDepth > 0) await new Promise((r) => setTimeout(r, 20));
      await cached.stop();
      cached = await startServer({ dataDir: cached.dataDir, args });
      c = kvparkClients(cached);
      const ssd = await all();
      expectReference(ssd, "ssd");
      expect(ssd.map((r) => r.cache)).toMatchObject(reports("ssdTokens"));
    } finally {
      await cached.stop();
    }
  });

  it("keeps a long stream and its joiners to their alone outputs as they join and leave", async () => {
    // 256 tokens, not fewer: the tiny model decodes one in a millisecond or two, and the last joiner
    // must still find the long stream running after the first two have come and gone.
    const long: Req = { prompt: tokens(ids(300, 11)), sampling: seeded(256, 32) };
    const early: Req[] = [
      { prompt: tokens(ids(40, 12)), sampling: seeded(8, 31) },
      { prompt: tokens(ids(120, 13)), sampling: greedy(6) },
    ];
    const late: Req = { prompt: tokens(ids(200, 14)), sampling: seeded(8, 33) };
    const [longAlone, ...othersAlone] = await alone(client, [long, ...early, late]);
    expect(longAlone.finish).toBe(FinishReason.MAX_TOKENS);

    let joined: Promise<Run[]> | undefined;
    const longStream = start(client, long, {
      onDelta: (r) => {
        // The two early joiners arrive while the long stream decodes; the late one once both left.
        if (r.ids.length < 4 || joined) return;
        joined = Promise.all(early.map((q) => generate(client, q))).then(async (runs) => [
          ...runs,
          await generate(client, late),
        ]);
      },
    });
    const longRun = await longStream.done;
    const others = await joined!;

    expect(output(longRun)).toEqual(output(longAlone));
    expect(others.map(output)).toEqual(othersAlone.map(output));
    // One started message, a delta per token and nothing else, one finished message: no gap, no error.
    expect(longRun.events).toEqual(["started", ...new Array(256).fill("delta"), "finished"]);
    expect(longRun.completionTokens).toBe(256);
    // Each joiner started after the long stream's first tokens (by construction) and left while it
    // was still decoding.
    for (const r of others) expect(r.endTick!).toBeLessThan(longRun.endTick!);
  });

  it("cancels one member of four; the others keep their alone outputs and the server serves on", async () => {
    const reqs: Req[] = [
      { prompt: tokens(ids(150, 21)), sampling: seeded(200, 41) },
      { prompt: tokens(ids(60, 22)), sampling: seeded(32, 42) },
      { prompt: tokens(ids(250, 23)), sampling: greedy(32) },
      { prompt: tokens(ids(100, 24)), sampling: seeded(32, 43) },
    ];
    const reference = await alone(client, reqs);
    // The stream to cancel would run on long after its first tokens.
    expect(reference[0].finish).toBe(FinishReason.MAX_TOKENS);
    const ac = new AbortController();
    let cancelTick = 0;
    const [victim, ...rest] = reqs.map((r, i) =>
      start(
        client,
        r,
        i === 0
          ? {
              signal: ac.signal,
              onDelta: (run) => {
                if (run.ids.length < 2 || ac.signal.aborted) return;
                cancelTick = tick();
                ac.abort();
              },
            }
          : {},
      ),
    );
    const err = await victim.done.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Canceled);
    // What the cancelled stream got is where its alone output begins.
    expect(victim.run.ids.length).toBeGreaterThanOrEqual(2);
    expect(victim.run.ids).toEqual(reference[0].ids.slice(0, victim.run.ids.length));

    const others = await Promise.all(rest.map((s) => s.done));
    expect(others.map(output)).toEqual(reference.slice(1).map(output));
    for (const r of others) expect(r.endTick!).toBeGreaterThan(cancelTick);

    const after = await generate(client, reqs[1]);
    expect(output(after)).toEqual(output(reference[1]));
  });
});

describe("an engine abort with a full batch", () => {
  let server: ServerProcess;
  let client: Inference;

  beforeAll(async () => {
    // The restart delay leaves time to see NOT_SERVING before the new engine is ready.
    server = await startServer({
      args: ["--cache=false", "--test-engine-abort", "--engine-restart-delay-ms", "1500"],
    });
    client = kvparkClients(server).inference;
  });
  afterAll(() => server?.stop());

  it("fails every member with UNAVAILABLE, then serves the alone output again", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const probe: Req = { prompt: tokens(ids(150, 31)), sampling: seeded(16, 51) };
    const [probeAlone] = await alone(client, [probe]);

    // Four streams far from their end, each past its first tokens, when the abort arrives. Greedy:
    // a seeded stream may sample the end of sequence before the abort comes.
    let decoding!: () => void;
    const allDecoding = new Promise<void>((resolve) => (decoding = resolve));
    const members = [80, 200, 30, 120].map((n, i) =>
      start(
        client,
        { prompt: tokens(ids(n, 32 + i)), sampling: greedy(4000) },
        {
          onDelta: () => {
            if (members.every((s) => s.run.ids.length >= 2)) decoding();
          },
        },
      ),
    );
    await Promise.race([
      allDecoding,
      ...members.map((s, i) =>
        s.done.then(() => {
          throw new Error(`member ${i} finished before the abort`);
        }),
      ),
    ]);
    const abort = start(client, { prompt: { kind: { case: "text", value: "__kvpark_abort__" } } });

    const errors = await Promise.all([...members, abort].map((s) => s.done.catch((e: unknown) => e)));
    for (const err of errors) {
      expect(err).toBeInstanceOf(ConnectError);
      expect(err).toMatchObject({
        code: Code.Unavailable,
        rawMessage: "the engine stopped while serving this request; retry",
      });
    }
    for (const s of members) {
      expect(s.run.ids.length).toBeGreaterThanOrEqual(2);
      expect(s.run.ids.length).toBeLessThan(4000);
      expect(s.run.events).not.toContain("finished");
    }

    const exit = await server.waitEvent("engine_exit");
    expect(exit.signal).toBe("SIGABRT");
    expect((await health.check({})).status).toBe(Status.NOT_SERVING);
    await server.waitFor(
      (l) => l.event === "engine_ready" && server.logs.indexOf(l) > server.logs.indexOf(exit),
      120_000,
    );
    expect((await health.check({})).status).toBe(Status.SERVING);
    expect(output(await generate(client, probe))).toEqual(output(probeAlone));
  });
});
