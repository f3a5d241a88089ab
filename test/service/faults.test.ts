import * as fs from "node:fs";
import * as path from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, testModel, type ServerProcess } from "../helpers/server";

const SAMPLING = { maxTokens: 6, temperature: 1, seed: 99n };

function clients(server: ServerProcess) {
  const transport = createGrpcTransport({ baseUrl: server.url });
  return {
    inference: createClient(InferenceService, transport),
    kv: createClient(KVBlocksService, transport),
  };
}

async function generate(c: Client<typeof InferenceService>, ids: number[]) {
  const out = { ids: [] as number[], reused: 0, corrupt: 0 };
  for await (const r of c.generate({
    prompt: { kind: { case: "tokens", value: { ids } } },
    sampling: SAMPLING,
  })) {
    if (r.event.case === "started") {
      out.reused = r.event.value.cache!.ramTokens + r.event.value.cache!.ssdTokens;
      out.corrupt = r.event.value.cache!.corruptBlocks;
    } else if (r.event.case === "delta") out.ids.push(...r.event.value.tokenIds);
  }
  return out;
}

describe("a damaged SSD store file costs only what it touched", () => {
  it("starts with a segment whose magic has a flipped bit, sets it aside, reports it, and answers as a cache-off server", async () => {
    const model = testModel();
    const prompts = [0, 1, 2].map((p) =>
      Array.from({ length: 130 }, (_, i) => 50 + ((i * 11 + p * 29) % 400)),
    );
    const args = ["--cost-model=false", "--ssd-fsync", "batch"];
    const first = await startServer({ model, args });
    const expected: number[][] = [];
    try {
      const c = clients(first);
      for (const ids of prompts) expected.push((await generate(c.inference, ids)).ids);
      while ((await c.kv.stats({})).writeQueueDepth > 0) await new Promise((r) => setTimeout(r, 20));
    } finally {
      await first.stop();
    }
    const dir = path.join(first.dataDir, "cache", "blocks");
    const segments = fs
      .readdirSync(dir)
      .filter((f) => /^seg-[0-9a-f]{8}\.kvs$/.test(f))
      .sort();
    expect(segments.length).toBeGreaterThanOrEqual(1);
    const file = path.join(dir, segments[0]);
    const bytes = fs.readFileSync(file);
    bytes[2] ^= 0x10; // a bit of the magic
    fs.writeFileSync(file, bytes);

    const second = await startServer({ model, dataDir: first.dataDir, args });
    try {
      const c = clients(second);
      const stats = await c.kv.stats({});
      expect(stats.ssdQuarantinedSegments).toBe(1);
      expect(fs.existsSync(`${file}.quarantined`)).toBe(true);
      const warning = await second.waitFor(
        (l) => l.event === "engine_log" && String(l.msg).includes("quarantined"),
      );
      expect(String(warning.msg)).toContain(segments[0]);
      // Every prompt is answered as before: its blocks were in the set-aside segment and are recomputed.
      for (const [i, ids] of prompts.entries()) {
        const again = await generate(c.inference, ids);
        expect(again.corrupt).toBe(0);
        expect(again.ids).toEqual(expected[i]);
      }
    } finally {
      await second.stop();
    }
  });
});
