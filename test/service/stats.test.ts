import { kvparkClients } from "../helpers/clients";
import { startServer, type ServerProcess } from "../helpers/server";

const TOKENS = { a: "tenant-a-token-0000001", b: "tenant-b-token-0000001", ops: "operator-token-000001" };

describe("Stats per tenant", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer({
      args: ["--auth-tokens", `a=${TOKENS.a},b=${TOKENS.b}`, "--admin-tokens", `ops=${TOKENS.ops}`],
    });
  });
  afterAll(() => server.stop());

  it("shows a tenant its own blocks only, and an operator every tenant's", async () => {
    const a = kvparkClients(server, TOKENS.a);
    const ids = Array.from({ length: 200 }, (_, i) => 20 + (i % 300));
    for await (const _ of a.inference.generate({
      prompt: { kind: { case: "tokens", value: { ids } } },
      sampling: { maxTokens: 2 },
    }));
    const b = kvparkClients(server, TOKENS.b);
    const ops = kvparkClients(server, TOKENS.ops);
    expect(Number((await b.kv.stats({})).ram!.blocks)).toBe(0);
    for await (const _ of b.inference.generate({
      prompt: { kind: { case: "tokens", value: { ids: ids.slice(0, 70) } } },
      sampling: { maxTokens: 2 },
    }));
    const ownA = await a.kv.stats({});
    const ownB = await b.kv.stats({});
    const all = await ops.kv.stats({});
    for (const s of [ownA, ownB]) {
      expect(Number(s.ram!.blocks)).toBeGreaterThan(0);
      expect(Number(s.ram!.bytes)).toBeGreaterThan(0);
    }
    // Tenant b's blocks are its own (same tokens, other keys): a sees none of them, the operator both.
    expect(Number(ownA.ram!.blocks)).toBeGreaterThan(Number(ownB.ram!.blocks));
    expect([Number(all.ram!.blocks), Number(all.ram!.bytes)]).toEqual([
      Number(ownA.ram!.blocks) + Number(ownB.ram!.blocks),
      Number(ownA.ram!.bytes) + Number(ownB.ram!.bytes),
    ]);
  });
});
