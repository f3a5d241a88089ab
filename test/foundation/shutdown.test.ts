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

  it("stops cleanly on a Ctrl-C sent to its whole process group, as a terminal does", async () => {
    const server = await startServer({ detached: true });
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
    for await (const _ of client.generate({
      prompt: { kind: { case: "text", value: "hello" } },
      sampling: { maxTokens: 4 },
    }));
    process.kill(-server.child.pid!, "SIGINT");
    expect(await server.exited).toEqual({ code: 0, signal: null });
    // The engine was stopped by the front end, not by the terminal's signal: no restart, no error.
    expect(server.logs.filter((l) => l.event === "engine_exit")).toEqual([]);
    // It flushed its cache and exited 0 on the front end's SIGTERM, not on the terminal's SIGINT.
    expect(server.logs.find((l) => l.event === "engine_stopped")).toMatchObject({ code: 0, signal: null });
    expect(server.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
    expect(server.logs.some((l) => l.event === "stopped")).toBe(true);
  });
});
