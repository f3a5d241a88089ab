import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import {
  InferenceService,
  type CacheReport,
  type GenerateRequest,
  type GenerateRequestSchema,
} from "../../gen/kvpark/v1/inference_pb";
import { PutBlocksRequestSchema, type KVBlock } from "../../gen/kvpark/v1/kvblocks_pb";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { ARCHITECTURE_CASES, TINY } from "../model/architectures";
import { removeTempDirs, tempDir } from "../cache/helpers";
import { kvparkClients } from "../helpers/clients";
import { startServer, type ServerProcess } from "../helpers/server";

// Hybrid models served with the prefix cache, against a server without one: qwen3_5 (recurrent
// Gated DeltaNet layers, whose state blocks carry as snapshots) and gemma3_text (a 24-token sliding
// window on two of its three layers). Blocks of 64 tokens (the default).
type Req = MessageInitShape<typeof GenerateRequestSchema>;

interface Out {
  ids: number[];
  cache?: CacheReport;
  promptTokens: number;
}

async function generate(c: Client<typeof InferenceService>, req: Req): Promise<Out> {
  const out: Out = { ids: [], promptTokens: 0 };
  for await (const res of c.generate(req as GenerateRequest)) {
    if (res.event.case === "started") {
      out.cache = res.event.value.cache;
      out.promptTokens = res.event.value.promptTokens;
    } else if (res.event.case === "delta") {
      out.ids.push(...res.event.value.tokenIds);
    }
  }
  return out;
}

const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % 500);
const prompt = (tokens: number[]) => ({ kind: { case: "tokens" as const, value: { ids: tokens } } });
const greedy = (tokens: number[], maxTokens = 6): Req => ({
  prompt: prompt(tokens),
  sampling: { maxTokens, temperature: 0 },
});
// Seeded sampling that stores nothing, so the cache holds what the greedy requests left.
const seeded = (tokens: number[], maxTokens = 6, seed = 7n): Req => ({
  prompt: prompt(tokens),
  sampling: { maxTokens, temperature: 1, seed },
  cache: { persist: false },
});

afterAll(removeTempDirs);

describe.each(["qwen3_5", "gemma3_text"] as const)("%s served with the prefix cache", (kind) => {
  const recurrent = kind === "qwen3_5";
  /** Tokens restored of a match of n tokens: qwen3_5 stops at the last block boundary when n ends mid-block. */
  const restored = (n: number, lastBlockEnd: number) => (recurrent && n < lastBlockEnd ? n - (n % 64) : n);
  let model: string;
  let reference: ServerProcess;
  let server: ServerProcess;
  let ref: ReturnType<typeof kvparkClients>;
  let svc: ReturnType<typeof kvparkClients>;

  beforeAll(async () => {
    model = tempDir("model");
    const config = {
      ...TINY,
      ...ARCHITECTURE_CASES.find((c) => c.config.model_type === kind)!.config,
      ...(kind === "gemma3_text" ? { sliding_window: 24 } : {}),
      max_position_embeddings: 4096,
    };
    await writeRandomCheckpoint(model, { config, seed: 3, tokenizerVocabSize: 512 });
    [reference, server] = await Promise.all([
      startServer({ model, args: ["--cache=false"] }),
      startServer({ model, args: ["--ssd-fsync", "none"] }),
    ]);
    ref = kvparkClients(reference);
    svc = kvparkClients(server);
  });
  afterAll(async () => {
    await Promise.all([reference?.stop(), server?.stop()]);
  });

  /** Greedy and seeded-sampled tokens of the cached server equal the reference's. */
  const expectSameAsReference = async (tokens: number[]): Promise<Out> => {
    const [a, b] = await Promise.all([
      generate(ref.inference, greedy(tokens)),
      generate(svc.inference, greedy(tokens)),
    ]);
    expect(b.ids).toEqual(a.ids);
    const [c, d] = await Promise.all([
      generate(ref.inference, seeded(tokens)),
      generate(svc.inference, seeded(tokens)),
    ]);
    expect(d.ids).toEqual(c.ids);
    return b;
  };

  it("RAM hit, a prompt extending the cached answer, and one diverging mid-block", async () => {
    const p = ids(200, 1);
    const first = await expectSameAsReference(p);
    expect(first.cache).toMatchObject({ ramTokens: 0, recomputedTokens: 200 });
    // The sequence held 205 tokens: blocks end at 64, 128, 192 and 205.
    const again = await expectSameAsReference(p);
    expect(again.cache).toMatchObject({
      ramTokens: restored(199, 205),
      recomputedTokens: 200 - restored(199, 205),
    });
    const turn2 = [...p, ...first.ids.slice(0, 5), ...ids(9, 2)];
    expect((await expectSameAsReference(turn2)).cache?.ramTokens).toBe(205);
    const diverging = [...p.slice(0, 100), ...ids(30, 3)];
    expect((await expectSameAsReference(diverging)).cache?.ramTokens).toBe(restored(100, 128));
  });

  it("a block boundary crossed while decoding is handed to the cache with its state", async () => {
    const p = ids(60, 31);
    // Decode runs positions 60 to 68: the sequence hands over block [0, 64) when it crosses 64,
    // and the tail [64, 69) when it finishes.
    const first = await generate(svc.inference, greedy(p, 10));
    const next = [...p, ...first.ids.slice(0, 9), ...ids(7, 32)];
    const run = await expectSameAsReference(next);
    expect(run.cache).toMatchObject({ ramTokens: 69, recomputedTokens: 7 });
  });

  it("continues Generate from a PrefillStream handle", async () => {
    const pieces = [ids(70, 11), ids(50, 12), ids(30, 13)];
    async function* requests() {
      for (const piece of pieces) yield { chunk: { case: "tokens" as const, value: { ids: piece } } };
    }
    let handle = "";
    for await (const res of svc.inference.prefillStream(requests())) handle = res.handle || handle;
    const question = ids(5, 14);
    const viaHandle = await generate(svc.inference, {
      handle,
      prompt: prompt(question),
      sampling: { maxTokens: 6, temperature: 0 },
    });
    expect(viaHandle.promptTokens).toBe(155);
    expect(viaHandle.cache?.ramTokens).toBe(150);
    const fromScratch = await generate(ref.inference, greedy([...pieces.flat(), ...question]));
    expect(viaHandle.ids).toEqual(fromScratch.ids);
  });

  it("decodes restored sequences in one batch as each alone", async () => {
    const prompts = [ids(150, 21), ids(90, 22), ids(230, 23)];
    for (const p of prompts) await generate(svc.inference, greedy(p, 2));
    // Seeded sampling over 24 steps: greedy output of a random model soon repeats one token.
    const long = (p: number[]) => seeded(p, 24, 5n);
    const want = await Promise.all(prompts.map((p) => generate(ref.inference, long(p))));
    const got = await Promise.all(prompts.map((p) => generate(svc.inference, long(p))));
    got.forEach((g, i) => {
      expect(g.ids).toEqual(want[i].ids);
      expect(g.cache!.ramTokens).toBeGreaterThan(0);
    });
  });

  it("moves a prompt's blocks to another node with GetBlocks and PutBlocks", async () => {
    const p = ids(220, 16);
    const original = await expectSameAsReference(p);
    const other = await startServer({ model });
    try {
      const node2 = kvparkClients(other);
      const lookup = await svc.kv.lookup({ prompt: prompt(p) });
      async function* fetched() {
        for await (const res of svc.kv.getBlocks({ keys: lookup.blocks.map((b) => b.key) })) {
          const block = res.result.value as KVBlock;
          expect(block.formatVersion).toBe(recurrent ? 2 : 1);
          yield create(PutBlocksRequestSchema, { block });
        }
      }
      const put = await node2.kv.putBlocks(fetched());
      expect(put).toMatchObject({ accepted: lookup.blocks.length, rejected: [] });
      const served = await generate(node2.inference, greedy(p));
      // 225 tokens cached: blocks end at 64, 128, 192 and 225.
      expect(served.cache).toMatchObject({ ramTokens: 0, ssdTokens: restored(219, 225) });
      expect(served.ids).toEqual(original.ids);
    } finally {
      await other.stop();
    }
  });

  it("after a restart serves the prompt from SSD", async () => {
    const p = ids(300, 15);
    const first = await expectSameAsReference(p);
    await server.stop();
    server = await startServer({ model, dataDir: server.dataDir, args: ["--ssd-fsync", "none"] });
    svc = kvparkClients(server);
    const again = await expectSameAsReference(p);
    expect(again.ids).toEqual(first.ids);
    // 305 tokens cached: blocks end at 64, ..., 256 and 305.
    expect(again.cache).toMatchObject({ ramTokens: 0, ssdTokens: restored(299, 305) });
  });
});
