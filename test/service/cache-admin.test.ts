/**
 * Managing the prefix cache of a running server (issue 17): ListBlocks, Evict, Clear, Export and
 * Import over gRPC, and the `kvpark cache` command against a running server and, for verify and
 * export, against a stopped one's data directory. A node that imports another node's bundle serves
 * the prompt as a hit with the token ids a cache-off server computes, greedy and seeded.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { PinKind, Tier } from "../../gen/kvpark/v1/common_pb";
import { InferenceService, type CacheReport, type GenerateRequest } from "../../gen/kvpark/v1/inference_pb";
import { PutBlocksRequestSchema, type KVBlock } from "../../gen/kvpark/v1/kvblocks_pb";
import { kvparkClients } from "../helpers/clients";
import { CLI, startServer, type ServerProcess } from "../helpers/server";
import { parseSegment, segmentFiles } from "../store/helpers";

const TOKENS = { a: "tenant-a-token-000001", b: "tenant-b-token-000001", ops: "operator-token-000001" };
const AUTH = ["--auth-tokens", `a=${TOKENS.a},b=${TOKENS.b}`, "--admin-tokens", `ops=${TOKENS.ops}`];

const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % 500);
const tokens = (prompt: number[]) => ({ kind: { case: "tokens" as const, value: { ids: prompt } } });
const byPrompt = (prompt: number[]) => ({ target: { case: "prompt" as const, value: tokens(prompt) } });
const hex = (key: Uint8Array) => Buffer.from(key).toString("hex");

interface Out {
  ids: number[];
  cache?: CacheReport;
}

async function generate(c: Client<typeof InferenceService>, prompt: number[], seed?: bigint): Promise<Out> {
  const out: Out = { ids: [] };
  const sampling =
    seed === undefined ? { maxTokens: 6, temperature: 0 } : { maxTokens: 6, temperature: 1, seed };
  const req = { prompt: tokens(prompt), sampling, ...(seed !== undefined && { cache: { persist: false } }) };
  for await (const res of c.generate(req as GenerateRequest)) {
    if (res.event.case === "started") out.cache = res.event.value.cache;
    else if (res.event.case === "delta") out.ids.push(...res.event.value.tokenIds);
  }
  return out;
}

async function collect(stream: AsyncIterable<{ data: Uint8Array }>): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for await (const res of stream) pieces.push(Buffer.from(res.data));
  return Buffer.concat(pieces);
}

async function* pieces(bundle: Buffer, tenant = "", size = 10_000) {
  for (let at = 0; at < bundle.length; at += size) {
    yield { data: bundle.subarray(at, at + size), tenant: at === 0 ? tenant : "" };
  }
}

/** Runs `kvpark cache ...`; returns its exit code and output. */
function cli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, "cache", ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Resolves once the SSD tier holds `blocks` of the caller's blocks (writes happen behind requests). */
async function ssdHolds(kv: ReturnType<typeof kvparkClients>["kv"], blocks: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (Number((await kv.stats({})).ssd!.blocks) === blocks) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the SSD tier never held ${blocks} blocks`);
}

describe("managing the prefix cache of a running server", () => {
  let reference: ServerProcess;
  let nodeA: ServerProcess;
  let nodeB: ServerProcess;
  let ref: ReturnType<typeof kvparkClients>;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-cache-admin-"));
  const p1 = ids(200, 1);
  const p2 = ids(130, 2);
  let exported: Buffer;

  beforeAll(async () => {
    [reference, nodeA, nodeB] = await Promise.all([
      startServer({ args: ["--cache=false"] }),
      startServer({ args: [...AUTH, "--ssd-fsync", "none"] }),
      startServer({ args: [...AUTH, "--ssd-fsync", "none"] }),
    ]);
    ref = kvparkClients(reference);
  });
  afterAll(async () => {
    await Promise.all([reference?.stop(), nodeA?.stop(), nodeB?.stop()]);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it("lists a tenant's blocks page by page, and every tenant's, named, to an operator only", async () => {
    const a = kvparkClients(nodeA, TOKENS.a);
    const b = kvparkClients(nodeA, TOKENS.b);
    const ops = kvparkClients(nodeA, TOKENS.ops);
    await generate(a.inference, p1);
    await generate(a.inference, p2);
    await generate(b.inference, p1);
    // 205 and 135 tokens cached (prompt and all but the last answer token): 4 and 3 blocks for a, 4 for b.
    await Promise.all([ssdHolds(a.kv, 7), ssdHolds(b.kv, 4)]);
    const pages = [];
    let pageToken = "";
    do {
      const page = await a.kv.listBlocks({ pageSize: 3, pageToken });
      expect(Number(page.totalBlocks)).toBe(7);
      pages.push(page.blocks);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(pages.map((p) => p.length)).toEqual([3, 3, 1]);
    const listed = pages.flat();
    const keys = listed.map((x) => hex(x.key));
    expect(keys).toEqual([...keys].sort());
    expect(listed.every((x) => x.tiers.join() === [Tier.RAM, Tier.SSD].join() && x.tenant === "")).toBe(true);
    expect(listed.map((x) => x.tokenCount).sort((x, y) => x - y)).toEqual([7, 13, 64, 64, 64, 64, 64]);
    expect(listed.filter((x) => x.parentKey.length === 0).length).toBe(2);
    expect(listed.every((x) => x.pin === PinKind.UNSPECIFIED && x.lastUsedUnixMs > 0n)).toBe(true);
    const lookup = await a.kv.lookup({ prompt: tokens(p1) });
    expect(lookup.blocks.every((blk) => keys.includes(hex(blk.key)))).toBe(true);

    const theirs = (await b.kv.listBlocks({ pageSize: 100 })).blocks.map((x) => hex(x.key));
    expect(theirs.length).toBe(4);
    expect(theirs.some((k) => keys.includes(k))).toBe(false);

    await expect(a.kv.listBlocks({ allTenants: true })).rejects.toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: "all_tenants: only operators (--admin-tokens) may set it",
    });
    await expect(a.kv.listBlocks({ pageToken: "nope" })).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "page_token: not a next_page_token this server gave",
    });
    const all = await ops.kv.listBlocks({ allTenants: true, pageSize: 1000 });
    expect(all.blocks.map((x) => `${x.tenant}:${hex(x.key)}`).sort()).toEqual(
      [...keys.map((k) => `a:${k}`), ...theirs.map((k) => `b:${k}`)].sort(),
    );
  });

  it("evicts from RAM, then both tiers; pinned blocks only with force; Stats follows", async () => {
    const a = kvparkClients(nodeA, TOKENS.a);
    const fromRam = await a.kv.evict({ blocks: byPrompt(p2), tier: Tier.RAM });
    expect(fromRam).toMatchObject({ evictedBlocks: 3, skippedPinnedBlocks: 0, ssdBytesFreed: 0n });
    expect(await a.kv.lookup({ prompt: tokens(p2) })).toMatchObject({
      cachedTokens: 130,
      ramTokens: 0,
      ssdTokens: 130,
    });
    const hit = await generate(a.inference, p2);
    expect(hit.cache).toMatchObject({ ramTokens: 0, ssdTokens: 129 });
    expect(hit.ids).toEqual((await generate(ref.inference, p2)).ids);

    await a.kv.pin({ blocks: byPrompt(p1), kind: PinKind.HARD });
    const before = await a.kv.stats({});
    const skipped = await a.kv.evict({ blocks: byPrompt(p1) });
    expect(skipped).toMatchObject({ evictedBlocks: 0, skippedPinnedBlocks: 4 });
    const forced = await a.kv.evict({ blocks: byPrompt(p1), force: true });
    expect(forced).toMatchObject({ evictedBlocks: 4, skippedPinnedBlocks: 0 });
    expect(forced.ramBytesFreed).toBeGreaterThan(0n);
    expect(forced.ssdBytesFreed).toBeGreaterThan(0n);
    expect((await a.kv.lookup({ prompt: tokens(p1) })).cachedTokens).toBe(0);
    const after = await a.kv.stats({});
    expect([Number(after.ram!.blocks), Number(after.ram!.pinnedBlocks), Number(after.ssd!.blocks)]).toEqual([
      Number(before.ram!.blocks) - 4,
      0,
      Number(before.ssd!.blocks) - 4,
    ]);
    expect([after.ram!.removedBlocks, after.ssd!.removedBlocks]).toEqual([7n, 4n]);
    // Computed again from scratch, as the cache-off server computes it.
    const again = await generate(a.inference, p1);
    expect(again.cache).toMatchObject({ ramTokens: 0, ssdTokens: 0 });
    expect(again.ids).toEqual((await generate(ref.inference, p1)).ids);
  });

  it("clears one tenant's cache and leaves another tenant's untouched", async () => {
    const a = kvparkClients(nodeA, TOKENS.a);
    const b = kvparkClients(nodeA, TOKENS.b);
    const bBefore = await b.kv.stats({});
    await expect(a.kv.clear({ allTenants: true })).rejects.toMatchObject({ code: Code.PermissionDenied });
    const cleared = await a.kv.clear({});
    expect(cleared.removedBlocks).toBeGreaterThanOrEqual(7);
    const aAfter = await a.kv.stats({});
    expect([aAfter.ram!.blocks, aAfter.ssd!.blocks, aAfter.ram!.bytes, aAfter.ssd!.bytes]).toEqual([
      0n,
      0n,
      0n,
      0n,
    ]);
    expect((await a.kv.listBlocks({})).totalBlocks).toBe(0n);
    expect((await a.kv.lookup({ prompt: tokens(p2) })).cachedTokens).toBe(0);
    const bAfter = await b.kv.stats({});
    expect([bAfter.ram!.blocks, bAfter.ssd!.blocks]).toEqual([bBefore.ram!.blocks, bBefore.ssd!.blocks]);
    expect((await b.kv.lookup({ prompt: tokens(p1) })).cachedTokens).toBe(200);
  });

  it("refuses a truncated or altered bundle, naming the entry, and keeps nothing of it", async () => {
    const b = kvparkClients(nodeA, TOKENS.b);
    exported = await collect(b.kv.export({}));
    const onB = kvparkClients(nodeB, TOKENS.b);
    const cut = onB.kv.import(pieces(exported.subarray(0, exported.length - 40)));
    await expect(cut).rejects.toMatchObject({
      code: Code.DataLoss,
      rawMessage: expect.stringMatching(
        /^bundle is truncated in bundle entry 5: the bundle ends \d+ bytes into it$/,
      ),
    });
    // A byte of the second block's tensors (entry 2): its frame checksum no longer matches.
    const frames: number[] = [];
    for (let at = 16; at < exported.length; at += 12 + exported.readUInt32LE(at + 8) + 32) frames.push(at);
    const altered = Buffer.from(exported);
    altered[frames[3] - 500] ^= 0x20;
    const block2 = hex((await b.kv.lookup({ prompt: tokens(p1) })).blocks[1].key).slice(0, 16);
    await expect(onB.kv.import(pieces(altered))).rejects.toMatchObject({
      code: Code.DataLoss,
      rawMessage: `bundle entry 2 (block ${block2}…) is damaged: its checksum does not match`,
    });
    const stats = await onB.kv.stats({});
    expect([stats.ram!.blocks, stats.ssd!.blocks]).toEqual([0n, 0n]);
    expect((await onB.kv.lookup({ prompt: tokens(p1) })).cachedTokens).toBe(0);
  });

  it("imports another node's bundle: the prompt is a hit with the ids a cache-off server computes", async () => {
    const onB = kvparkClients(nodeB, TOKENS.b);
    // Under another tenant the first block's key does not verify; the message says why, naming no tenant.
    const asA = kvparkClients(nodeB, TOKENS.a);
    const refused = await asA.kv.import(pieces(exported)).catch((e: ConnectError) => e);
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.InvalidArgument);
    expect((refused as ConnectError).rawMessage).toMatch(
      /^bundle entry 1 \(block [0-9a-f]{16}…\): KEY_MISMATCH: key differs from the key computed from parent key and token ids: .*keys are salted per tenant, so this block was likely exported under another tenant/,
    );
    for (const token of Object.values(TOKENS))
      expect((refused as ConnectError).rawMessage).not.toContain(token);
    await expect(asA.kv.import(pieces(exported, "b"))).rejects.toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: "tenant: only operators (--admin-tokens) may set it",
    });

    const imported = await onB.kv.import(pieces(exported));
    expect(imported).toMatchObject({ blocks: 4, storedBlocks: 4, presentBlocks: 0, tokens: 205n });
    const hit = await generate(onB.inference, p1);
    expect(hit.cache).toMatchObject({ ramTokens: 0, ssdTokens: 199, recomputedTokens: 1 });
    expect(hit.ids).toEqual((await generate(ref.inference, p1)).ids);
    const [seeded, seededRef] = await Promise.all([
      generate(onB.inference, p1, 7n),
      generate(ref.inference, p1, 7n),
    ]);
    expect(seeded.cache?.ramTokens).toBe(199);
    expect(seeded.ids).toEqual(seededRef.ids);
    // An operator imports under the tenant that exported it.
    const ops = kvparkClients(nodeB, TOKENS.ops);
    expect(await ops.kv.import(pieces(exported, "b"))).toMatchObject({ storedBlocks: 0, presentBlocks: 4 });

    // PutBlocks of the same first block under another tenant says the same (issue 17, item 7).
    const onA = kvparkClients(nodeA, TOKENS.b);
    const first = (await onA.kv.lookup({ prompt: tokens(p1) })).blocks[0].key;
    let block: KVBlock | undefined;
    for await (const res of onA.kv.getBlocks({ keys: [first] })) block = res.result.value as KVBlock;
    const put = asA.kv.putBlocks(
      (async function* () {
        yield create(PutBlocksRequestSchema, { block });
      })(),
    );
    await expect(put).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: expect.stringContaining("keys are salted per tenant, so this block was likely exported"),
    });
  });

  it("runs every kvpark cache command against the running server, with its exit code", async () => {
    const url = ["--url", nodeA.url];
    const asB = [...url, "--token", TOKENS.b];
    const stats = cli("stats", ...asB);
    expect([stats.code, JSON.parse(stats.stdout).blockTokens]).toEqual([0, 64]);
    const ls = cli("ls", ...asB, "--json");
    expect(ls.code).toBe(0);
    expect(
      ls.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l).tokens)
        .sort(),
    ).toEqual([13, 64, 64, 64]);
    const lsAll = cli("ls", ...url, "--token", TOKENS.ops, "--all");
    expect([lsAll.code, lsAll.stdout.split("\n")[0]]).toEqual([
      0,
      "key  tiers  tokens  bytes  ssd_bytes  pin  last_used  tenant",
    ]);
    const file = path.join(tmp, "b.kvbundle");
    const exp = cli("export", file, ...asB);
    expect([exp.code, exp.stdout.trim()]).toEqual([
      0,
      `kvpark: wrote ${file}: 4 blocks, ${fs.statSync(file).size} bytes`,
    ]);
    expect(cli("verify", file)).toMatchObject({ code: 0 });
    expect(cli("verify", ...asB)).toMatchObject({
      code: 0,
      stdout: "kvpark: verified 4 blocks of the tenant through Export: all intact\n",
    });
    const imp = cli("import", file, ...url, "--token", TOKENS.ops, "--tenant", "b");
    expect([imp.code, imp.stdout.trim()]).toEqual([
      0,
      `kvpark: imported ${file}: 4 blocks, 0 stored, 4 already cached`,
    ]);
    const ev = cli("evict", ...asB, "--tokens", p1.slice(0, 64).join(","), "--tier", "ram");
    expect([ev.code, ev.stdout]).toEqual([0, expect.stringMatching(/^kvpark: evicted 1 blocks /)]);
    // Refusals exit 1, bad usage 2.
    expect(cli("clear", ...url, "--token", TOKENS.a, "--all")).toMatchObject({
      code: 1,
      stderr:
        "kvpark: cache clear: PERMISSION_DENIED: all_tenants: only operators (--admin-tokens) may set it\n",
    });
    expect(cli("stats", ...url, "--token", "wrong-token-000000000")).toMatchObject({ code: 1 });
    expect(cli("evict", ...asB).code).toBe(2);
    expect(cli("export", ...asB).code).toBe(2);
    expect(cli("frobnicate").code).toBe(2);
    expect(cli("ls", ...asB, "--tier", "ram").code).toBe(2);
    expect(cli("stats", "--data-dir", nodeA.dataDir)).toMatchObject({
      code: 2,
      stderr: expect.stringContaining(
        "cache stats runs against a running server only: give --url, not --data-dir",
      ),
    });
    const locked = cli("verify", "--data-dir", nodeA.dataDir);
    expect(locked.code).toBe(1);
    expect(locked.stderr).toMatch(
      /^kvpark: cache verify: KV_LOCKED: the cache in .* is in use by a running server \(its LOCK is held by pid \d+\); stop the server first/,
    );
    const clear = cli("clear", ...asB);
    expect([clear.code, clear.stdout]).toEqual([0, expect.stringMatching(/^kvpark: removed 4 blocks /)]);
  });

  it("verifies and exports a stopped server's data directory, and finds a flipped bit", async () => {
    const b = kvparkClients(nodeA, TOKENS.b);
    await generate(b.inference, p1);
    await ssdHolds(b.kv, 4);
    const live = new Set((await b.kv.listBlocks({})).blocks.map((x) => hex(x.key)));
    await nodeA.stop();
    const ok = cli("verify", "--data-dir", nodeA.dataDir);
    expect([ok.code, ok.stdout]).toEqual([
      0,
      expect.stringMatching(/: 4 blocks, 4 intact, 0 damaged; models [0-9a-f]{16}…\n$/),
    ]);
    const file = path.join(tmp, "offline.kvbundle");
    const exp = cli("export", file, "--data-dir", nodeA.dataDir, "--tenant", "b");
    expect([exp.code, exp.stdout]).toEqual([
      0,
      expect.stringMatching(/^kvpark: wrote .*: 4 blocks, \d+ bytes, from /),
    ]);
    // The offline bundle imports into the other node (which holds these blocks already).
    const onB = kvparkClients(nodeB, TOKENS.b);
    const r = await onB.kv.import(pieces(fs.readFileSync(file)));
    expect(r).toMatchObject({ blocks: 4, presentBlocks: 4 });

    // One bit of a live block's payload, in the middle of its record (earlier records were cleared).
    const record = segmentFiles(path.join(nodeA.dataDir, "cache", "blocks"))
      .flatMap((segment) => parseSegment(segment))
      .filter((x) => x.kind === 1 && live.has(x.key.toString("hex")))
      .at(-1)!;
    const bytes = fs.readFileSync(record.file);
    bytes[record.offset + 64 + Math.floor(record.payloadBytes / 2)] ^= 0x08;
    fs.writeFileSync(record.file, bytes);
    const damaged = cli("verify", "--data-dir", nodeA.dataDir);
    expect(damaged.code).toBe(1);
    expect(damaged.stdout.split("\n").filter((l) => l.startsWith("kvpark: block"))).toEqual([
      `kvpark: block ${record.key.toString("hex")}: KV_CORRUPT: the record does not match its checksum (the store no longer serves it)`,
    ]);
    expect(damaged.stdout).toMatch(/: \d+ blocks, \d+ intact, 1 damaged/);
  });
});
