import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb";
import { blockKey, rootKey } from "../../src/cache/block-key";
import { kvparkClients } from "../helpers/clients";
import { generate, greedy, ids, seeded as seededWith } from "../helpers/token-requests";
import { RedisServer, redisCli } from "../helpers/redis";
import { startServer, type ServerProcess } from "../helpers/server";

// Two kvpark nodes with their own data directories and one redis-server: what node A computes,
// node B serves from the shared tier, identical to a server without any cache.

const seeded = (prompt: number[]) => seededWith(prompt, 11n);

const B = 64;
const TOKENS = "alice=alice-token-0123456789,bob=bob-token-0123456789";

describe("shared tier on one redis-server", () => {
  let redis: RedisServer;
  let reference: ServerProcess;
  let nodeA: ServerProcess;
  let nodeB: ServerProcess;
  let ref: ReturnType<typeof kvparkClients>;
  let a: ReturnType<typeof kvparkClients>;
  let b: ReturnType<typeof kvparkClients>;
  let bobB: ReturnType<typeof kvparkClients>;
  let bobA: ReturnType<typeof kvparkClients>;
  let fingerprint: string;

  beforeAll(async () => {
    redis = await RedisServer.start();
    const shared = ["--auth-tokens", TOKENS, "--ssd-fsync", "none", "--shared-tier", redis.url];
    [reference, nodeA, nodeB] = await Promise.all([
      startServer({ args: ["--cache=false"] }),
      // Node A keeps the default admission: a block goes to Redis the second time it is used.
      startServer({ args: shared }),
      startServer({ args: [...shared, "--shared-tier-timeout-ms", "1000"] }),
    ]);
    ref = kvparkClients(reference);
    a = kvparkClients(nodeA, "alice-token-0123456789");
    b = kvparkClients(nodeB, "alice-token-0123456789");
    bobA = kvparkClients(nodeA, "bob-token-0123456789");
    bobB = kvparkClients(nodeB, "bob-token-0123456789");
    fingerprint = (await a.kv.stats({})).modelFingerprint;
  }, 180_000);
  afterAll(async () => {
    await Promise.all([reference?.stop(), nodeA?.stop(), nodeB?.stop()]);
    await redis?.stop();
  });

  const sharedStats = async (c: ReturnType<typeof kvparkClients>) => (await c.kv.stats({})).shared!;

  /**
   * Node A computes the prompt `runs` times (the default admission writes a block the second time
   * it is used); resolves once the prompt's blocks are in Redis.
   */
  async function seed(client: ReturnType<typeof kvparkClients>, prompt: number[], runs = 2): Promise<void> {
    const before = Number((await sharedStats(client)).writtenBlocks);
    for (let i = 0; i < runs; i++) await generate(client.inference, greedy(prompt));
    const blocks = Math.ceil((prompt.length + 6) / B);
    const deadline = Date.now() + 20_000;
    while (Number((await sharedStats(client)).writtenBlocks) < before + blocks) {
      if (Date.now() > deadline) throw new Error("node A did not write its blocks to Redis");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Node B's answer, greedy and seeded, against the cache-off server's. */
  async function expectSameAsReference(client: ReturnType<typeof kvparkClients>, prompt: number[]) {
    const [want, got] = await Promise.all([
      generate(ref.inference, greedy(prompt)),
      generate(client.inference, greedy(prompt)),
    ]);
    expect(got.ids).toEqual(want.ids);
    const [wantSeeded, gotSeeded] = await Promise.all([
      generate(ref.inference, seeded(prompt)),
      generate(client.inference, seeded(prompt)),
    ]);
    expect(gotSeeded.ids).toEqual(wantSeeded.ids);
    return got;
  }

  const keysOf = (tenant: string, prompt: number[]) => {
    const out: Buffer[] = [];
    let parent = rootKey(tenant, fingerprint);
    for (let s = 0; s + B <= prompt.length; s += B) {
      parent = blockKey(parent, prompt.slice(s, s + B), fingerprint);
      out.push(parent);
    }
    return out;
  };
  const redisKey = (key: Buffer) => `kvpark:b:${key.toString("hex")}`;

  it("serves on node B what node A computed, identical to a cache-off server", async () => {
    const prompt = ids(600, 1);
    await generate(a.inference, greedy(prompt));
    // One use is not a reuse: the default admission has written nothing yet.
    expect(Number((await sharedStats(a)).writtenBlocks)).toBe(0);
    await seed(a, prompt, 1);
    expect(Number(redisCli(redis.port, "exists", redisKey(keysOf("alice", prompt)[8])))).toBe(1);
    const served = await expectSameAsReference(b, prompt);
    // Nine whole blocks by key, then 23 tokens of node A's partial tenth block, by the chain metadata.
    expect(served.cache).toMatchObject({
      ramTokens: 0,
      ssdTokens: 0,
      sharedTokens: 599,
      recomputedTokens: 1,
    });
    const s = await sharedStats(b);
    expect(Number(s.hits)).toBe(10);
    expect(Number(s.rejectedBlocks)).toBe(0);
    expect(s.connected).toBe(true);
    // Promoted: the next request finds it in node B's RAM.
    const again = await generate(b.inference, greedy(prompt));
    expect(again.cache).toMatchObject({ ramTokens: 599, sharedTokens: 0 });
    // Another tenant's prompt under the same tokens finds nothing: keys are salted per tenant.
    const bob = await generate(bobB.inference, greedy(prompt));
    expect(bob.cache).toMatchObject({ ramTokens: 0, sharedTokens: 0, recomputedTokens: 600 });
  }, 120_000);

  it("refuses a value altered in Redis, counts it and recomputes from there", async () => {
    const prompt = ids(300, 2);
    await seed(a, prompt);
    const key = redisKey(keysOf("alice", prompt)[2]);
    // Flip one byte near the end of the value: inside the last tensor's floats.
    redisCli(
      redis.port,
      "eval",
      "local v = redis.call('GET', KEYS[1]); local i = #v - 100; return redis.call('SET', KEYS[1], v:sub(1, i - 1) .. string.char((v:byte(i) + 1) % 256) .. v:sub(i + 1))",
      "1",
      key,
    );
    const before = await sharedStats(b);
    const served = await expectSameAsReference(b, prompt);
    expect(served.cache).toMatchObject({
      sharedTokens: 2 * B,
      corruptBlocks: 1,
      recomputedTokens: 300 - 2 * B,
    });
    const after = await sharedStats(b);
    expect(Number(after.rejectedBlocks) - Number(before.rejectedBlocks)).toBe(1);
    // Deleted from Redis, so no node reads it again.
    expect(redisCli(redis.port, "exists", key)).toBe("0");
  }, 120_000);

  it("refuses a truncated value", async () => {
    const prompt = ids(300, 3);
    await seed(a, prompt);
    const key = redisKey(keysOf("alice", prompt)[0]);
    redisCli(
      redis.port,
      "eval",
      "local v = redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], v:sub(1, math.floor(#v / 2)))",
      "1",
      key,
    );
    const served = await expectSameAsReference(b, prompt);
    expect(served.cache).toMatchObject({ sharedTokens: 0, corruptBlocks: 1, recomputedTokens: 300 });
  }, 120_000);

  it("refuses another tenant's block written under this tenant's key", async () => {
    const prompt = ids(300, 4);
    await seed(bobA, prompt);
    // Bob's first block, copied to the key alice's lookup of the same tokens asks for.
    const bobKey = redisKey(keysOf("bob", prompt)[0]);
    const aliceKey = redisKey(keysOf("alice", prompt)[0]);
    redisCli(redis.port, "copy", bobKey, aliceKey);
    expect(redisCli(redis.port, "exists", aliceKey)).toBe("1");
    const before = await sharedStats(b);
    const served = await expectSameAsReference(b, prompt);
    expect(served.cache).toMatchObject({ sharedTokens: 0, corruptBlocks: 1, recomputedTokens: 300 });
    expect(Number((await sharedStats(b)).rejectedBlocks) - Number(before.rejectedBlocks)).toBe(1);
    // Bob's own node B serves his blocks.
    const bob = await generate(bobB.inference, greedy(prompt));
    expect(bob.cache?.sharedTokens).toBe(299);
  }, 120_000);

  it("bounds a lookup by --shared-tier-timeout-ms when Redis hangs", async () => {
    const prompt = ids(300, 8);
    await seed(a, prompt);
    const before = await sharedStats(b);
    process.kill(redis.pid!, "SIGSTOP");
    try {
      const r = await expectSameAsReference(b, prompt);
      expect(r.cache).toMatchObject({ sharedTokens: 0, recomputedTokens: 300 });
      // Two requests (greedy and seeded), each ending its lookup at the time budget.
      const s = await sharedStats(b);
      expect(Number(s.timeouts) - Number(before.timeouts)).toBe(2);
    } finally {
      process.kill(redis.pid!, "SIGCONT");
    }
    // Once Redis answers again, so does the tier.
    const next = ids(300, 9);
    await seed(a, next);
    const r = await generate(b.inference, greedy(next));
    expect(r.cache?.sharedTokens).toBe(299);
  }, 120_000);

  it("goes on without Redis stopped mid-request, stays SERVING, and resumes once it is back", async () => {
    const prompt = ids(500, 5);
    await seed(a, prompt);
    // Stop Redis while node B's request for that prompt runs; it must succeed either way.
    const running = expectSameAsReference(b, prompt);
    await new Promise((resolve) => setTimeout(resolve, 5));
    await redis.kill();
    await running;
    const health = createClient(Health, createGrpcTransport({ baseUrl: nodeB.url }));
    expect((await health.check({})).status).toBe(Status.SERVING);
    const down = ids(400, 6);
    const r = await expectSameAsReference(b, down);
    expect(r.cache).toMatchObject({ sharedTokens: 0, recomputedTokens: 400 });
    const s = await sharedStats(b);
    expect(s.connected).toBe(false);
    expect(Number(s.readErrors) + Number(s.timeouts)).toBeGreaterThan(0);
    // Back, empty: node A writes again, node B reads again, both having reconnected by themselves.
    await redis.restart();
    const deadline = Date.now() + 20_000;
    while (!(await sharedStats(a)).connected || !(await sharedStats(b)).connected) {
      if (Date.now() > deadline) throw new Error("the nodes did not reconnect to Redis");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const later = ids(400, 7);
    await seed(a, later);
    const resumed = await expectSameAsReference(b, later);
    expect(resumed.cache).toMatchObject({ sharedTokens: 399, recomputedTokens: 1 });
  }, 180_000);
});
