import * as fs from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  InferenceService,
  GenerateRequestSchema,
  type GenerateResponse,
} from "../../gen/kvpark/v1/inference_pb";
import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { grpcJsClient, serverStream, unary } from "../helpers/grpcjs";
import { makeCerts } from "../helpers/certs";
import { startServer, type ServerProcess } from "../helpers/server";

const TOKEN = "tenant-a-secret-token-0001";

function bearer(token: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
}

function generateRequest(init: Parameters<typeof create<typeof GenerateRequestSchema>>[1]) {
  return create(GenerateRequestSchema, init);
}

describe("status codes through grpc-js", () => {
  let server: ServerProcess;
  let inference: ReturnType<typeof grpcJsClient>;

  beforeAll(async () => {
    server = await startServer({
      args: ["--auth-tokens", `tenant-a=${TOKEN}`, "--message-bytes-max", "4096"],
    });
    inference = grpcJsClient(InferenceService, `127.0.0.1:${server.port}`);
  });
  afterAll(async () => {
    inference.close();
    await server.stop();
  });

  it("answers a typed Generate stream", async () => {
    const msgs = await serverStream<GenerateResponse>(
      inference,
      "generate",
      generateRequest({
        prompt: { kind: { case: "text", value: "hello there" } },
        sampling: { maxTokens: 4, temperature: 0 },
      }),
      { metadata: bearer(TOKEN) },
    );
    expect(msgs[0].event.case).toBe("started");
    expect(msgs.at(-1)!.event.case).toBe("finished");
    const finished = msgs.at(-1)!.event.value as { usage: { completionTokens: number } };
    expect(finished.usage.completionTokens).toBeGreaterThan(0);
  });

  it("UNIMPLEMENTED for an unknown method", async () => {
    const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      client.makeUnaryRequest(
        "/kvpark.v1.InferenceService/NoSuchMethod",
        (x: Buffer) => x,
        (x: Buffer) => x,
        Buffer.alloc(0),
        bearer(TOKEN),
        (e) => resolve(e!),
      ),
    );
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    client.close();
  });

  it("INVALID_ARGUMENT naming the field", async () => {
    const cases: [Parameters<typeof generateRequest>[0], string][] = [
      [{}, "prompt: required: set text, chat or tokens"],
      [
        { prompt: { kind: { case: "text", value: "hi" } }, sampling: { maxTokens: 0 } },
        "sampling.max_tokens: must be between 1 and 8192, got 0",
      ],
      [
        { prompt: { kind: { case: "text", value: "hi" } }, sampling: { topP: 1.5 } },
        "sampling.top_p: must be in (0, 1], got 1.5",
      ],
      [
        { prompt: { kind: { case: "chat", value: { messages: [] } } } },
        "prompt.chat.messages: must hold at least one message",
      ],
      [
        { prompt: { kind: { case: "tokens", value: { ids: [1, 99999999] } } } },
        "prompt.tokens.ids[1]: token id 99999999 is outside the vocabulary",
      ],
      [{ model: "gpt-9", prompt: { kind: { case: "text", value: "hi" } } }, 'model: unknown model "gpt-9"'],
    ];
    for (const [req, message] of cases) {
      const err = await serverStream(inference, "generate", generateRequest(req), {
        metadata: bearer(TOKEN),
      }).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err?.details).toContain(message);
    }
  });

  it("RESOURCE_EXHAUSTED for an oversize message", async () => {
    const err = await serverStream(
      inference,
      "generate",
      generateRequest({ prompt: { kind: { case: "text", value: "x".repeat(8000) } } }),
      {
        metadata: bearer(TOKEN),
      },
    ).catch((e: grpc.ServiceError) => e);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  });

  it("DEADLINE_EXCEEDED when the deadline passes mid-stream", async () => {
    const err = await serverStream(
      inference,
      "generate",
      generateRequest({
        prompt: { kind: { case: "text", value: "a long story" } },
        sampling: { maxTokens: 8000 },
      }),
      { metadata: bearer(TOKEN), deadlineMs: 400 },
    ).catch((e: grpc.ServiceError) => e);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.DEADLINE_EXCEEDED);
    // The engine was freed: a new request completes.
    const msgs = await serverStream<GenerateResponse>(
      inference,
      "generate",
      generateRequest({ prompt: { kind: { case: "text", value: "again" } }, sampling: { maxTokens: 2 } }),
      { metadata: bearer(TOKEN) },
    );
    expect(msgs.at(-1)!.event.case).toBe("finished");
  });

  it("UNAUTHENTICATED without a token or with a wrong one; health needs none", async () => {
    const kv = grpcJsClient(KVBlocksService, `127.0.0.1:${server.port}`);
    for (const md of [new grpc.Metadata(), bearer("wrong-token-wrong-token")]) {
      const err = await unary(kv, "stats", {}, { metadata: md }).catch((e: grpc.ServiceError) => e);
      expect((err as grpc.ServiceError).code).toBe(grpc.status.UNAUTHENTICATED);
      const gen = await serverStream(
        inference,
        "generate",
        generateRequest({ prompt: { kind: { case: "text", value: "hi" } } }),
        { metadata: md },
      ).catch((e: grpc.ServiceError) => e);
      expect((gen as grpc.ServiceError).code).toBe(grpc.status.UNAUTHENTICATED);
    }
    const health = grpcJsClient(Health, `127.0.0.1:${server.port}`);
    expect((await unary<HealthCheckResponse>(health, "check", { service: "" })).status).toBe(Status.SERVING);
    health.close();
    kv.close();
  });
});

describe("mutual TLS", () => {
  const certs = makeCerts();
  let server: ServerProcess;

  beforeAll(async () => {
    server = await startServer({
      args: ["--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--tls-ca", certs.ca],
    });
  });
  afterAll(() => server.stop());

  it("serves a client with a certificate and refuses the handshake of one without", async () => {
    const ca = fs.readFileSync(certs.ca);
    const good = grpcJsClient(
      Health,
      `127.0.0.1:${server.port}`,
      grpc.credentials.createSsl(ca, fs.readFileSync(certs.clientKey), fs.readFileSync(certs.clientCert)),
    );
    expect((await unary<HealthCheckResponse>(good, "check", { service: "" })).status).toBe(Status.SERVING);
    const bad = grpcJsClient(Health, `127.0.0.1:${server.port}`, grpc.credentials.createSsl(ca));
    const err = (await unary(bad, "check", { service: "" }, { deadlineMs: 5000 }).catch(
      (e: grpc.ServiceError) => e,
    )) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    good.close();
    bad.close();
  });
});
