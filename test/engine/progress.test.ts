import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  InferenceService,
  type GenerateRequestSchema,
  type GenerateResponse,
} from "../../gen/kvpark/v1/inference_pb";
import { startServer, type ServerProcess } from "../helpers/server";

type Req = MessageInitShape<typeof GenerateRequestSchema>;

describe("Generate reports the progress of a long prefill", () => {
  let server: ServerProcess;
  let client: ReturnType<typeof createClient<typeof InferenceService>>;

  beforeAll(async () => {
    // The default model: a 4k-token prefill takes seconds on it.
    server = await startServer({ model: "small", args: ["--cache=false"] });
    client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
  }, 180_000);
  afterAll(() => server.stop());

  async function events(req: Req): Promise<GenerateResponse[]> {
    const out: GenerateResponse[] = [];
    for await (const res of client.generate(req)) out.push(res);
    return out;
  }

  it("sends progress between started and the first token, a few per second at most", async () => {
    const total = 4000;
    const ids = Array.from({ length: total }, (_, i) => 10 + ((i * 7919) % 4000));
    const msgs = await events({
      prompt: { kind: { case: "tokens", value: { ids } } },
      sampling: { maxTokens: 2, temperature: 0 },
    });
    const kinds = msgs.map((m) => m.event.case);
    expect(kinds[0]).toBe("started");
    const progress = msgs
      .filter((m) => m.event.case === "progress")
      .map(
        (m) =>
          m.event.value as {
            promptTokensDone: number;
            promptTokensTotal: number;
          },
      );
    expect(progress.length).toBeGreaterThan(0);
    // All of them come before the first token.
    const firstDelta = kinds.indexOf("delta");
    expect(kinds.lastIndexOf("progress")).toBeLessThan(firstDelta < 0 ? kinds.length - 1 : firstDelta);
    let done = 0;
    for (const p of progress) {
      expect(p.promptTokensTotal).toBe(total);
      expect(p.promptTokensDone).toBeGreaterThan(done);
      expect(p.promptTokensDone).toBeLessThan(total);
      done = p.promptTokensDone;
    }
    // At most one per 250 ms of prefill, the first one only after 250 ms.
    const finished = msgs.at(-1)!.event;
    expect(finished.case).toBe("finished");
    const prefillMs = (finished.value as { timings: { prefillMs: number } }).timings.prefillMs;
    expect(progress.length).toBeLessThanOrEqual(Math.floor(prefillMs / 250));
  }, 180_000);

  it("sends none for a prompt computed in one step", async () => {
    const msgs = await events({
      prompt: { kind: { case: "text", value: "a short prompt" } },
      sampling: { maxTokens: 3 },
    });
    expect(msgs.some((m) => m.event.case === "progress")).toBe(false);
    expect(msgs[0].event.case).toBe("started");
    expect(msgs.at(-1)!.event.case).toBe("finished");
  });
});
