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
    const own = await a.kv.stats({});
    const other = await kvparkClients(server, TOKENS.b).kv.stats({});
    const all = await kvparkClients(server, TOKENS.ops).kv.stats({});
    expect(Number(own.ram!.blocks)).toBeGreaterThan(0);
    expect(Number(own.ram!.bytes)).toBeGreaterThan(0);
    expect([Number(other.ram!.blocks), Number(other.ram!.bytes)]).toEqual([0, 0]);
    expect([Number(all.ram!.blocks), Number(all.ram!.bytes)]).toEqual([
      Number(own.ram!.blocks),
      Number(own.ram!.bytes),
    ]);
  });
});
