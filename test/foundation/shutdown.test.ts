import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService, FinishReason } from "../../gen/kvpark/v1/inference_pb";
import { startServer } from "../helpers/server";

describe("graceful shutdown", () => {
  it("lets a stream in flight finish on SIGTERM and exits 0", async () => {
    const server = await startServer();
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
    const events: string[] = [];
    let finish: FinishReason | undefined;
    let signalled = false;
    for await (const res of client.generate({
      prompt: { kind: { case: "text", value: "count to twenty" } },
      sampling: { maxTokens: 48, temperature: 0 },
    })) {
      events.push(res.event.case!);
      if (res.event.case === "delta" && !signalled) {
        signalled = true;
        server.child.kill("SIGTERM");
      }
      if (res.event.case === "finished") finish = res.event.value.finishReason;
    }
    expect(signalled).toBe(true);
    expect(events[0]).toBe("started");
    expect(events.at(-1)).toBe("finished");
    expect([FinishReason.MAX_TOKENS, FinishReason.EOS]).toContain(finish);
    expect(await server.exited).toEqual({ code: 0, signal: null });
    expect(server.logs.some((l) => l.event === "stopped")).toBe(true);
  });
});
