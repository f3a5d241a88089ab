import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb";
import { InferenceService, FinishReason, type GenerateRequest } from "../../gen/kvpark/v1/inference_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { GenerateRequestSchema } from "../../gen/kvpark/v1/inference_pb";
import { createKvparkClient } from "../../src/client";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, type ServerProcess } from "../helpers/server";

type Req = MessageInitShape<typeof GenerateRequestSchema>;

interface Run {
  ids: number[];
  text: string;
  finish?: FinishReason;
  started?: number;
  firstDeltaAt?: number;
  promptTokens?: number;
}

async function run(client: ReturnType<typeof createClient<typeof InferenceService>>, req: Req): Promise<Run> {
  const out: Run = { ids: [], text: "" };
  for await (const res of client.generate(req as GenerateRequest)) {
    if (res.event.case === "started") {
      out.started = performance.now();
      out.promptTokens = res.event.value.promptTokens;
    } else if (res.event.case === "delta") {
      out.firstDeltaAt ??= performance.now();
      out.ids.push(...res.event.value.tokenIds);
      out.text += res.event.value.text;
    } else if (res.event.case === "finished") out.finish = res.event.value.finishReason;
  }
  return out;
}

const words = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => `w${(i * 7919 + seed) % 997}`).join(" ");

describe("engine serving", () => {
  let server: ServerProcess;
  let client: ReturnType<typeof createClient<typeof InferenceService>>;

  beforeAll(async () => {
    server = await startServer({
      args: ["--test-engine-abort", "--prefill-chunk-tokens", "64", "--engine-restart-delay-ms", "1500"],
    });
    client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
  });
  afterAll(() => server.stop());

  it("gives identical results to concurrent requests as to each alone", async () => {
    const reqs: Req[] = [0, 1, 2].map((i) => ({
      prompt: { kind: { case: "text", value: words(40 + i * 30, i) } },
      sampling: { maxTokens: 12, temperature: i === 2 ? 0.8 : 0, seed: BigInt(7 + i) },
    }));
    const alone: Run[] = [];
    for (const r of reqs) alone.push(await run(client, r));
    const together = await Promise.all(reqs.map((r) => run(client, r)));
    expect(together.map((r) => r.ids)).toEqual(alone.map((r) => r.ids));
    expect(together.map((r) => r.text)).toEqual(alone.map((r) => r.text));
    for (const r of alone) expect(r.ids.length).toBeGreaterThan(0);
  });

  it("keeps decoding other streams and answering health during a long prefill", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const ids = Array.from({ length: 6000 }, (_, i) => (i * 31) % 500);
    let longDone = false;
    const long = run(client, {
      prompt: { kind: { case: "tokens", value: { ids } } },
      sampling: { maxTokens: 1 },
    }).finally(() => (longDone = true));
    await new Promise((r) => setTimeout(r, 50));
    expect((await health.check({})).status).toBe(Status.SERVING);
    // Answered while the prefill was still running (how fast: `npm run bench`, section concurrency).
    expect(longDone).toBe(false);
    const short = await run(client, {
      prompt: { kind: { case: "text", value: "hi" } },
      sampling: { maxTokens: 3 },
    });
    const longRun = await long;
    expect(longRun.promptTokens).toBe(6000);
    // The short request arrived later but got its first token before the long prompt was done.
    expect(short.firstDeltaAt!).toBeLessThan(longRun.firstDeltaAt!);
  });

  it("cancelling a stream frees the engine for the next request", async () => {
    const ac = new AbortController();
    let deltas = 0;
    await expect(
      (async () => {
        for await (const res of client.generate(
          { prompt: { kind: { case: "text", value: "go on" } }, sampling: { maxTokens: 5000 } },
          { signal: ac.signal },
        )) {
          if (res.event.case === "delta" && ++deltas === 2) ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ code: Code.Canceled });
    const next = await run(client, {
      prompt: { kind: { case: "text", value: "next" } },
      sampling: { maxTokens: 2 },
    });
    expect(next.finish).toBe(FinishReason.MAX_TOKENS);
  });

  it("refuses a prompt longer than the context with OUT_OF_RANGE", async () => {
    const err = await run(client, {
      prompt: { kind: { case: "tokens", value: { ids: new Array(40000).fill(5) } } },
    }).catch((e) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect(err.code).toBe(Code.OutOfRange);
    expect(err.rawMessage).toMatch(
      /^prompt: 40000 tokens plus 1 to generate exceed the model's context of \d+ tokens$/,
    );
  });

  it("survives an engine abort: UNAVAILABLE, NOT_SERVING, then serving again", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const err = await run(client, { prompt: { kind: { case: "text", value: "__kvpark_abort__" } } }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect(err.code).toBe(Code.Unavailable);
    const exit = await server.waitEvent("engine_exit");
    expect(exit.signal).toBe("SIGABRT");
    expect((await health.check({})).status).toBe(Status.NOT_SERVING);
    // The typed client retries UNAVAILABLE by itself while the engine restarts.
    const kv = createKvparkClient({ baseUrl: server.url, attempts: 30, backoffMs: 100 });
    const direct = await createClient(KVBlocksService, createGrpcTransport({ baseUrl: server.url }))
      .stats({})
      .catch((e) => e);
    expect(direct.code).toBe(Code.Unavailable);
    const stats = await kv.kvBlocks.stats({});
    expect(stats.blockTokens).toBe(64);
    await server.waitFor(
      (l) => l.event === "engine_ready" && server.logs.indexOf(l) > server.logs.indexOf(exit),
      120_000,
    );
    expect((await health.check({})).status).toBe(Status.SERVING);
    const after = await run(client, {
      prompt: { kind: { case: "text", value: "still here" } },
      sampling: { maxTokens: 2 },
    });
    expect(after.ids.length).toBe(2);
  });
});
