import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  InferenceService,
  type GenerateRequestSchema,
  type GenerateRequest,
  type CacheReport,
} from "../../gen/kvpark/v1/inference_pb";
import { PutBlocksRequestSchema, type KVBlock } from "../../gen/kvpark/v1/kvblocks_pb";
import { Tier, PinKind } from "../../gen/kvpark/v1/common_pb";
import { kvparkClients } from "../helpers/clients";
import { startServer, type ServerProcess } from "../helpers/server";

type Req = MessageInitShape<typeof GenerateRequestSchema>;

interface Out {
  ids: number[];
  text: string;
  cache?: CacheReport;
  promptTokens: number;
}

async function generate(c: Client<typeof InferenceService>, req: Req): Promise<Out> {
  const out: Out = { ids: [], text: "", promptTokens: 0 };
  for await (const res of c.generate(req as GenerateRequest)) {
    if (res.event.case === "started") {
      out.cache = res.event.value.cache;
      out.promptTokens = res.event.value.promptTokens;
    } else if (res.event.case === "delta") {
      out.ids.push(...res.event.value.tokenIds);
      out.text += res.event.value.text;
    }
  }
  return out;
}

/**
 * A consistently forged copy of a block: header fields, the payload's safetensors metadata and the
 * checksum all agree, so only the server's own checks (key recomputed from parent and tokens, model,
 * shapes, finite values) can catch it.
 */
function forge(
  block: KVBlock,
  change: {
    key?: Uint8Array;
    modelFingerprint?: string;
    formatVersion?: number;
    nanAt?: number;
    shape?: number[];
  },
): KVBlock {
  const payload = Buffer.from(block.payload);
  const n = Number(payload.readBigUInt64LE(0));
  const header = JSON.parse(payload.subarray(8, 8 + n).toString("utf8"));
  const data = Buffer.from(payload.subarray(8 + n));
  const meta = header.__metadata__;
  if (change.key) meta.key = Buffer.from(change.key).toString("hex");
  if (change.modelFingerprint) meta.model_fingerprint = change.modelFingerprint;
  if (change.formatVersion) meta.format_version = String(change.formatVersion);
  if (change.shape) meta.shape = JSON.stringify(change.shape);
  if (change.nanAt !== undefined) data.writeFloatLE(NaN, change.nanAt * 4);
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const forged = Buffer.concat([len, json, data]);
  return {
    ...block,
    key: change.key ?? block.key,
    modelFingerprint: change.modelFingerprint ?? block.modelFingerprint,
    formatVersion: change.formatVersion ?? block.formatVersion,
    shape: change.shape ?? block.shape,
    payload: forged,
    payloadSha256: createHash("sha256").update(forged).digest(),
  };
}

const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % 500);
const greedy = (prompt: number[], maxTokens = 6) => ({
  prompt: { kind: { case: "tokens" as const, value: { ids: prompt } } },
  sampling: { maxTokens, temperature: 0 },
});

describe("prefix cache through the service", () => {
  let reference: ServerProcess;
  let server: ServerProcess;
  let ref: ReturnType<typeof kvparkClients>;
  let svc: ReturnType<typeof kvparkClients>;
  const TOKENS = "alice=alice-token-0123456789,bob=bob-token-0123456789";

  beforeAll(async () => {
    [reference, server] = await Promise.all([
      startServer({ args: ["--cache=false"] }),
      startServer({ args: ["--auth-tokens", TOKENS, "--ssd-fsync", "none"] }),
    ]);
    ref = kvparkClients(reference);
    svc = kvparkClients(server, "alice-token-0123456789");
  });
  afterAll(async () => {
    await Promise.all([reference.stop(), server?.stop()]);
  });

  // Greedy output of the random-weight model repeats one token, so seeded sampling is compared too;
  // that request stores nothing, so the cache holds what the tests below expect.
  const expectSameAsReference = async (prompt: number[]): Promise<Out> => {
    const [a, b] = await Promise.all([
      generate(ref.inference, greedy(prompt)),
      generate(svc.inference, greedy(prompt)),
    ]);
    expect(b.ids).toEqual(a.ids);
    const seeded = {
      ...greedy(prompt),
      sampling: { maxTokens: 6, temperature: 1, seed: 7n },
      cache: { persist: false },
    };
    const [c, d] = await Promise.all([generate(ref.inference, seeded), generate(svc.inference, seeded)]);
    expect(d.ids).toEqual(c.ids);
    return b;
  };

  it("serves a repeated prompt from RAM with the answer computed from scratch", async () => {
    const p = ids(200, 1);
    const cold = await expectSameAsReference(p);
    expect(cold.cache).toMatchObject({ ramTokens: 0, ssdTokens: 0, recomputedTokens: 200 });
    const hit = await expectSameAsReference(p);
    expect(hit.cache).toMatchObject({ ramTokens: 199, ssdTokens: 0, recomputedTokens: 1 });
  });

  it("hits a prompt shorter than one block on repeat, and one diverging mid-block", async () => {
    const short = ids(20, 2);
    await expectSameAsReference(short);
    expect((await expectSameAsReference(short)).cache?.ramTokens).toBe(19);
    const base = ids(100, 3);
    await expectSameAsReference(base);
    const diverged = [...base.slice(0, 90), ...ids(30, 4)];
    const r = await expectSameAsReference(diverged);
    expect(r.cache?.ramTokens).toBe(90);
    // Cached were 105 tokens (prompt and all but the last answer token): 41 in the second block,
    // of which the prompt shares 26.
    expect(r.cache?.divergedTokens).toBe(15);
  });

  it("reuses the previous answer's KV in a conversation's next turn", async () => {
    const turn1 = ids(80, 5);
    const a1 = await expectSameAsReference(turn1);
    const turn2 = [...turn1, ...a1.ids, ...ids(10, 6)];
    const r = await expectSameAsReference(turn2);
    // Everything but the last generated token (whose KV was never computed) and the new message.
    expect(r.cache?.ramTokens).toBe(turn1.length + a1.ids.length - 1);
  });

  it("reports the reuse a chat template loses when it re-renders the previous answer", async () => {
    const system = { role: "system", content: "You are a careful coding agent. ".repeat(12) };
    const user1 = { role: "user", content: "Read src/main.ts and tell me what it does." };
    const chat = (messages: { role: string; content: string }[]): Req => ({
      prompt: { kind: { case: "chat", value: { messages } } },
      sampling: { maxTokens: 12, temperature: 0 },
    });
    const t1 = await generate(svc.inference, chat([system, user1]));
    const t2 = await generate(
      svc.inference,
      chat([
        system,
        user1,
        { role: "assistant", content: t1.text },
        { role: "user", content: "Now fix it." },
      ]),
    );
    // The first turn's prompt is reused (its last token, the newline opening the answer, may merge
    // with the answer's first characters when the history is tokenized again); whatever of the
    // cached answer the re-rendered history does not reproduce is reported, and the two add up to
    // what was cached.
    const reused = t2.cache!.ramTokens + t2.cache!.ssdTokens;
    expect(reused).toBeGreaterThanOrEqual(t1.promptTokens - 1);
    expect(reused + t2.cache!.divergedTokens).toBe(t1.promptTokens + t1.ids.length - 1);
  });

  it("keeps a request with persist=false out of the cache, and pins one that asks for it", async () => {
    const p = ids(90, 17);
    const optOut = { ...greedy(p), cache: { persist: false } };
    await generate(svc.inference, optOut);
    expect((await generate(svc.inference, optOut)).cache?.ramTokens).toBe(0);
    const before = Number((await svc.kv.stats({})).ram!.pinnedBlocks);
    await generate(svc.inference, { ...greedy(p), cache: { pin: PinKind.SOFT, pinTtlSeconds: 60 } });
    // 90 prompt tokens: one full block and a partial one.
    expect(Number((await svc.kv.stats({})).ram!.pinnedBlocks)).toBe(before + 2);
    await expect(
      generate(svc.inference, { ...greedy(p), cache: { pin: PinKind.HARD, pinTtlSeconds: 5 } }),
    ).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "cache.pin_ttl_seconds: a hard pin has no time to live",
    });
    expect(
      (
        await svc.kv.unpin({
          blocks: { target: { case: "prompt", value: { kind: { case: "tokens", value: { ids: p } } } } },
        })
      ).unpinnedBlocks,
    ).toBe(2);
  });

  it("keeps tenants apart", async () => {
    const p = ids(150, 7);
    await generate(svc.inference, greedy(p));
    const bob = kvparkClients(server, "bob-token-0123456789");
    expect((await generate(bob.inference, greedy(p))).cache?.ramTokens).toBe(0);
    expect((await generate(svc.inference, greedy(p))).cache?.ramTokens).toBe(149);
    const lookup = await bob.kv.lookup({ prompt: { kind: { case: "tokens", value: { ids: ids(150, 8) } } } });
    expect(lookup.cachedTokens).toBe(0);
  });

  it("answers KVBlocks calls and refuses bad ones with the field named", async () => {
    const p = ids(140, 9);
    await generate(svc.inference, greedy(p));
    const lookup = await svc.kv.lookup({ prompt: { kind: { case: "tokens", value: { ids: p } } } });
    expect(lookup.promptTokens).toBe(140);
    expect(lookup.cachedTokens).toBe(140);
    expect(lookup.blocks.map((b) => [b.startToken, b.tokenCount, b.tier])).toEqual([
      [0, 64, Tier.RAM],
      [64, 64, Tier.RAM],
      [128, 12, Tier.RAM],
    ]);
    const blocks: KVBlock[] = [];
    for await (const res of svc.kv.getBlocks({ keys: lookup.blocks.map((b) => b.key) })) {
      expect(res.result.case).toBe("block");
      blocks.push(res.result.value as KVBlock);
    }
    // The last block also holds the start of the answer; the prompt matches its first 12 tokens.
    expect(lookup.blocks.at(-1)!.tokenCount).toBe(12);
    expect(blocks.map((b) => b.tokenIds.length)).toEqual([64, 64, 17]);
    expect(blocks[1].parentKey).toEqual(blocks[0].key);
    const badKeys = svc.kv.getBlocks({ keys: [new Uint8Array(5)] });
    await expect(badKeys[Symbol.asyncIterator]().next()).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "keys[0]: a block key has 32 bytes, got 5",
    });
    await expect(
      svc.kv.pin({ blocks: { target: { case: "keys", value: { keys: [blocks[0].key] } } } }),
    ).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "kind: required: PIN_KIND_SOFT or PIN_KIND_HARD",
    });
    const pinned = await svc.kv.pin({
      blocks: { target: { case: "prompt", value: { kind: { case: "tokens", value: { ids: p } } } } },
      kind: PinKind.HARD,
    });
    expect(pinned.pinnedBlocks).toBe(3);
    expect(
      (
        await svc.kv.unpin({
          blocks: { target: { case: "keys", value: { keys: blocks.map((b) => b.key) } } },
        })
      ).unpinnedBlocks,
    ).toBe(3);
    const stats = await svc.kv.stats({});
    expect(stats.blockTokens).toBe(64);
    expect(Number(stats.ram?.blocks)).toBeGreaterThan(0);
  });

  it("refuses PutBlocks of tampered blocks, naming the reason, and stores nothing", async () => {
    const p = ids(64, 10);
    await generate(svc.inference, greedy(p, 1));
    const lookup = await svc.kv.lookup({ prompt: { kind: { case: "tokens", value: { ids: p } } } });
    let good: KVBlock | undefined;
    for await (const res of svc.kv.getBlocks({ keys: [lookup.blocks[0].key] }))
      good = res.result.value as KVBlock;
    // Bob has no blocks; each tampered copy is refused for bob, so his lookup stays empty.
    const bob = kvparkClients(server, "bob-token-0123456789");
    const tampered: [Parameters<typeof forge>[1], Code, RegExp][] = [
      [{ key: new Uint8Array(32).fill(7) }, Code.InvalidArgument, /^block 0: KEY_MISMATCH: /],
      [{ modelFingerprint: "0".repeat(64) }, Code.FailedPrecondition, /^block 0: MODEL_MISMATCH: /],
      [
        { shape: [good!.shape[0], good!.shape[1] * 2, good!.shape[2] / 2] },
        Code.InvalidArgument,
        /^block 0: SHAPE_MISMATCH: /,
      ],
      [{ nanAt: 5 }, Code.InvalidArgument, /^block 0: INVALID_PAYLOAD: .*(NaN|finite)/],
      [{ formatVersion: 9 }, Code.InvalidArgument, /^block 0: UNSUPPORTED_VERSION: /],
    ];
    for (const [change, code, message] of tampered) {
      const err = await bob.kv
        .putBlocks(
          (async function* () {
            yield create(PutBlocksRequestSchema, { block: forge(good!, change) });
          })(),
        )
        .catch((e: ConnectError) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(code);
      expect((err as ConnectError).rawMessage).toMatch(message);
    }
    expect(
      (await bob.kv.lookup({ prompt: { kind: { case: "tokens", value: { ids: p } } } })).cachedTokens,
    ).toBe(0);
  });

  it("moves a prompt's blocks to another node with GetBlocks and PutBlocks", async () => {
    const p = ids(220, 16);
    const original = await expectSameAsReference(p);
    const other = await startServer({ args: ["--auth-tokens", TOKENS] });
    try {
      const node2 = kvparkClients(other, "alice-token-0123456789");
      const lookup = await svc.kv.lookup({ prompt: { kind: { case: "tokens", value: { ids: p } } } });
      async function* fetched() {
        for await (const res of svc.kv.getBlocks({ keys: lookup.blocks.map((b) => b.key) })) {
          yield create(PutBlocksRequestSchema, { block: res.result.value as KVBlock });
        }
      }
      const put = await node2.kv.putBlocks(fetched());
      expect(put.accepted).toBe(lookup.blocks.length);
      expect(put.rejected).toEqual([]);
      const served = await generate(node2.inference, greedy(p));
      // Put blocks land on the receiving node's SSD tier.
      expect(served.cache).toMatchObject({ ramTokens: 0, ssdTokens: 219, recomputedTokens: 1 });
      expect(served.ids).toEqual(original.ids);
    } finally {
      await other.stop();
    }
  });

  it("continues Generate from a PrefillStream handle", async () => {
    const pieces = [ids(70, 11), ids(50, 12), ids(30, 13)];
    async function* requests() {
      for (const piece of pieces) yield { chunk: { case: "tokens" as const, value: { ids: piece } } };
    }
    const progress = [];
    for await (const res of svc.inference.prefillStream(requests())) progress.push(res);
    const last = progress.at(-1)!;
    expect(last.tokensReceived).toBe(150);
    expect(last.tokensPrefilled).toBe(150);
    expect(last.handle).toMatch(/^ph_[0-9a-f]{32}$/);
    const question = ids(5, 14);
    const viaHandle = await generate(svc.inference, {
      handle: last.handle,
      prompt: { kind: { case: "tokens", value: { ids: question } } },
      sampling: { maxTokens: 6, temperature: 0 },
    });
    expect(viaHandle.promptTokens).toBe(155);
    expect(viaHandle.cache?.ramTokens).toBe(150);
    const fromScratch = await generate(ref.inference, greedy([...pieces.flat(), ...question]));
    expect(viaHandle.ids).toEqual(fromScratch.ids);
    await expect(
      generate(kvparkClients(server, "bob-token-0123456789").inference, { handle: last.handle }),
    ).rejects.toMatchObject({ code: Code.NotFound });
  });

  it("after a restart serves the prompt from SSD; a corrupted block is recomputed and counted", async () => {
    const p = ids(300, 15);
    const first = await expectSameAsReference(p);
    await server.stop();
    server = await startServer({
      dataDir: server.dataDir,
      args: ["--auth-tokens", TOKENS, "--ssd-fsync", "none"],
    });
    svc = kvparkClients(server, "alice-token-0123456789");
    const again = await expectSameAsReference(p);
    expect(again.ids).toEqual(first.ids);
    expect(again.cache).toMatchObject({ ramTokens: 0, ssdTokens: 299, recomputedTokens: 1 });

    // Damage every segment file's tail, where the latest blocks are, then restart.
    await server.stop();
    const blocksDir = path.join(server.dataDir, "cache", "blocks");
    for (const f of fs.readdirSync(blocksDir).filter((f) => f.endsWith(".kvs"))) {
      const file = path.join(blocksDir, f);
      const fd = fs.openSync(file, "r+");
      const size = fs.fstatSync(fd).size;
      fs.writeSync(fd, Buffer.from([0xde, 0xad, 0xbe, 0xef]), 0, 4, Math.max(0, size - 4096));
      fs.closeSync(fd);
    }
    server = await startServer({
      dataDir: server.dataDir,
      args: ["--auth-tokens", TOKENS, "--ssd-fsync", "none"],
    });
    svc = kvparkClients(server, "alice-token-0123456789");
    const repaired = await expectSameAsReference(p);
    expect(repaired.cache!.corruptBlocks).toBeGreaterThan(0);
    expect(repaired.cache!.ssdTokens).toBeLessThan(299);
    expect(Number((await svc.kv.stats({})).corruptBlocks)).toBeGreaterThan(0);
    // Recomputed blocks were rewritten: the next request is a full hit again.
    expect((await expectSameAsReference(p)).cache?.recomputedTokens).toBe(1);
  });
});
