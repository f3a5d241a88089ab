import { blockKey, rootKey } from "../../src/cache/block-key";
import { kvparkClients } from "../helpers/clients";
import { generate, greedy, ids, seeded as seededWith, type Out } from "../helpers/token-requests";
import { RedisCluster, redisCli } from "../helpers/redis";
import { startServer, type ServerProcess } from "../helpers/server";

// The shared tier on a Redis Cluster of three masters started on loopback ports: a chain's blocks
// spread over the shards, and one master killed mid-test costs what it held, never an answer.

const seeded = (prompt: number[]) => seededWith(prompt, 5n);

const B = 64;
const N = 1000;

/** The port of the master serving `key`'s slot, from `cluster nodes` of a live node. */
function ownerOf(key: string, askPort: number): number {
  const slot = Number(redisCli(askPort, "cluster", "keyslot", key));
  for (const line of redisCli(askPort, "cluster", "nodes").split("\n")) {
    const fields = line.trim().split(" ");
    const port = Number(fields[1].split("@")[0].split(":")[1]);
    for (const range of fields.slice(8)) {
      const [lo, hi] = range.split("-").map(Number);
      if (slot >= lo && slot <= (hi ?? lo)) return port;
    }
  }
  throw new Error(`no master serves slot ${slot}`);
}

describe("shared tier on a three-master Redis Cluster", () => {
  let cluster: RedisCluster;
  let reference: ServerProcess;
  let nodeA: ServerProcess;
  let nodeB: ServerProcess;
  let ref: ReturnType<typeof kvparkClients>;
  let a: ReturnType<typeof kvparkClients>;
  let b: ReturnType<typeof kvparkClients>;

  beforeAll(async () => {
    cluster = await RedisCluster.start(3);
    const shared = ["--ssd-fsync", "none", "--shared-tier", cluster.url, "--shared-tier-timeout-ms", "1000"];
    [reference, nodeA, nodeB] = await Promise.all([
      startServer({ args: ["--cache=false"] }),
      startServer({ args: [...shared, "--shared-tier-admission", "all"] }),
      startServer({ args: shared }),
    ]);
    ref = kvparkClients(reference);
    a = kvparkClients(nodeA);
    b = kvparkClients(nodeB);
  }, 180_000);
  afterAll(async () => {
    await Promise.all([reference?.stop(), nodeA?.stop(), nodeB?.stop()]);
    await cluster?.stop();
  });

  async function seed(prompt: number[]): Promise<void> {
    const before = Number((await a.kv.stats({})).shared!.writtenBlocks);
    await generate(a.inference, greedy(prompt));
    const deadline = Date.now() + 20_000;
    while (
      Number((await a.kv.stats({})).shared!.writtenBlocks) <
      before + Math.ceil((prompt.length + 6) / B)
    ) {
      if (Date.now() > deadline) throw new Error("node A did not write its blocks to the cluster");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async function expectSameAsReference(prompt: number[]): Promise<Out> {
    const [want, got] = await Promise.all([
      generate(ref.inference, greedy(prompt)),
      generate(b.inference, greedy(prompt)),
    ]);
    expect(got.ids).toEqual(want.ids);
    const [wantSeeded, gotSeeded] = await Promise.all([
      generate(ref.inference, seeded(prompt)),
      generate(b.inference, seeded(prompt)),
    ]);
    expect(gotSeeded.ids).toEqual(wantSeeded.ids);
    return got;
  }

  it("serves node A's blocks, spread over the shards, on node B; a master killed costs only its blocks", async () => {
    const fingerprint = (await a.kv.stats({})).modelFingerprint;
    const keysOf = (prompt: number[]) => {
      const out: string[] = [];
      let parent = rootKey("", fingerprint);
      for (let s = 0; s + B <= prompt.length; s += B) {
        parent = blockKey(parent, prompt.slice(s, s + B), fingerprint);
        out.push(`kvpark:b:${parent.toString("hex")}`);
      }
      return out;
    };
    const first = ids(N, 21);
    const second = ids(N, 22);
    await seed(first);
    await seed(second);
    // Every master holds some of the blocks.
    for (const node of cluster.nodes) expect(Number(redisCli(node.port, "dbsize"))).toBeGreaterThan(0);
    const served = await expectSameAsReference(first);
    expect(served.cache).toMatchObject({ sharedTokens: N - 1, recomputedTokens: 1 });

    // Kill (SIGKILL, by pid) the master holding the eighth block of the second prompt.
    const keys = keysOf(second);
    const owners = keys.map((k) => ownerOf(k, cluster.nodes[0].port));
    const dead = owners[7];
    await cluster.nodes.find((n) => n.port === dead)!.kill();
    const kept = owners.indexOf(dead); // the chain ends at its first block on the dead master
    expect(kept).toBeLessThanOrEqual(7);
    const after = await expectSameAsReference(second);
    expect(after.cache).toMatchObject({ sharedTokens: kept * B, recomputedTokens: N - kept * B });
    // Requests keep succeeding.
    const third = ids(600, 23);
    const r = await expectSameAsReference(third);
    expect(r.cache?.recomputedTokens).toBe(600);
    const s = (await b.kv.stats({})).shared!;
    expect(Number(s.readErrors) + Number(s.timeouts)).toBeGreaterThan(0);
    expect(Number(s.rejectedBlocks)).toBe(0);
  }, 240_000);
});
