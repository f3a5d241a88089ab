import * as http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  GenerateRequestSchema,
  InferenceService,
  type GenerateResponse,
  type PrefillStreamResponse,
} from "../../gen/kvpark/v1/inference_pb";
import { ModelService } from "../../gen/kvpark/v1/model_pb";
import { grpcJsClient, serverStream } from "../helpers/grpcjs";
import { startServer, type ServerProcess } from "../helpers/server";

const TOKEN = "tenant-a-secret-token-0001";
const AUTH = `Bearer ${TOKEN}`;

function bearer(): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", AUTH);
  return md;
}

/** A length-prefixed message with the given flags byte. */
function envelope(flags: number, message: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(message.byteLength, 1);
  return Buffer.concat([head, message]);
}

const generateBytes = toBinary(
  GenerateRequestSchema,
  create(GenerateRequestSchema, {
    prompt: { kind: { case: "text", value: "hello" } },
    sampling: { maxTokens: 2 },
  }),
);
// GenerateRequest.prompt (field 2) announces 5 bytes and carries 1.
const truncated = Uint8Array.from([0x12, 0x05, 0x0a]);
// GenerateRequest.model (field 1) holding the bytes C3 28: not UTF-8.
const badUtf8 = Uint8Array.from([0x0a, 0x02, 0xc3, 0x28]);
// TokenizeRequest.prompt.text holding the same bytes.
const badUtf8Tokenize = Uint8Array.from([0x0a, 0x04, 0x0a, 0x02, 0xc3, 0x28]);

interface RawAnswer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
}

/** One gRPC call over a bare HTTP/2 stream, so that the bytes on the wire are exactly `body`. */
function rawGrpc(port: number, path: string, body: Buffer): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      authorization: AUTH,
    });
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => (headers = h));
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", reject);
    stream.on("close", () => {
      session.close();
      resolve({ status: Number(headers[":status"]), headers, trailers, data: Buffer.concat(chunks) });
    });
    stream.end(body);
  });
}

/** The grpc-status of a gRPC answer: in the trailers, or in the headers of a trailers-only answer. */
function grpcStatus(a: RawAnswer): number {
  return Number(a.trailers["grpc-status"] ?? a.headers["grpc-status"]);
}

/** A gRPC-Web call over HTTP/1.1; the status is in the headers (trailers-only) or the trailer frame. */
async function grpcWeb(
  port: number,
  path: string,
  body: Buffer,
): Promise<{ status: number; message: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: AUTH },
    body,
  });
  expect(res.status).toBe(200);
  const inHeader = res.headers.get("grpc-status");
  if (inHeader !== null)
    return { status: Number(inHeader), message: decodeURIComponent(res.headers.get("grpc-message") ?? "") };
  const bytes = Buffer.from(await res.arrayBuffer());
  for (let at = 0; at < bytes.length;) {
    const flags = bytes[at];
    const len = bytes.readUInt32BE(at + 1);
    const payload = bytes.subarray(at + 5, at + 5 + len).toString("utf8");
    at += 5 + len;
    if (flags & 0x80) {
      const status = /grpc-status:\s*(\d+)/i.exec(payload)![1];
      const message = /grpc-message:\s*(.*)/i.exec(payload)?.[1].trim() ?? "";
      return { status: Number(status), message: decodeURIComponent(message) };
    }
  }
  throw new Error("no gRPC-Web trailers");
}

/** A Connect streaming call over HTTP/1.1; returns the error of its end-of-stream message. */
async function connectStream(
  port: number,
  path: string,
  body: Buffer,
): Promise<{ code?: string; message?: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/connect+proto",
      "connect-protocol-version": "1",
      authorization: AUTH,
    },
    body,
  });
  expect(res.status).toBe(200);
  const bytes = Buffer.from(await res.arrayBuffer());
  for (let at = 0; at < bytes.length;) {
    const flags = bytes[at];
    const len = bytes.readUInt32BE(at + 1);
    const payload = bytes.subarray(at + 5, at + 5 + len);
    at += 5 + len;
    if (flags & 0x02)
      return (JSON.parse(payload.toString("utf8")) as { error?: { code: string } }).error ?? {};
  }
  throw new Error("no Connect end-of-stream message");
}

/** A Connect unary call over HTTP/1.1 with a raw body. */
async function connectUnary(
  port: number,
  path: string,
  body: Uint8Array,
  contentType = "application/proto",
): Promise<{ status: number; json: { code?: string; message?: string } }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: "POST",
    headers: { "content-type": contentType, "connect-protocol-version": "1", authorization: AUTH },
    body,
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : {} };
}

describe("hostile input", () => {
  let server: ServerProcess;
  let inference: ReturnType<typeof grpcJsClient>;

  beforeAll(async () => {
    server = await startServer({ args: ["--auth-tokens", `tenant-a=${TOKEN}`] });
    inference = grpcJsClient(InferenceService, `127.0.0.1:${server.port}`);
  });
  afterAll(async () => {
    inference.close();
    await server.stop();
  });

  describe("a request message that is not valid protobuf is INVALID_ARGUMENT", () => {
    const generate = "/kvpark.v1.InferenceService/Generate";
    const tokenize = "/kvpark.v1.ModelService/Tokenize";

    it("over grpc-js, streaming and unary, truncated and invalid UTF-8", async () => {
      const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
      const stream = (bytes: Uint8Array) =>
        new Promise<grpc.ServiceError>((resolve, reject) => {
          const call = client.makeServerStreamRequest(
            generate,
            (x: Buffer) => x,
            (x: Buffer) => x,
            Buffer.from(bytes),
            bearer(),
          );
          call.on("data", () => undefined);
          call.on("error", resolve);
          call.on("end", () => reject(new Error("the call succeeded")));
        });
      for (const bytes of [truncated, badUtf8]) {
        const err = await stream(bytes);
        expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(err.details).toContain("not a valid kvpark.v1.GenerateRequest");
      }
      const unaryErr = await new Promise<grpc.ServiceError>((resolve) =>
        client.makeUnaryRequest(
          tokenize,
          (x: Buffer) => x,
          (x: Buffer) => x,
          Buffer.from(badUtf8Tokenize),
          bearer(),
          (e) => resolve(e!),
        ),
      );
      expect(unaryErr.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(unaryErr.details).toContain("request: not a valid kvpark.v1.TokenizeRequest");
      client.close();
    });

    it("over gRPC-Web", async () => {
      for (const bytes of [truncated, badUtf8]) {
        const r = await grpcWeb(server.port, generate, envelope(0, bytes));
        expect(r.status).toBe(grpc.status.INVALID_ARGUMENT);
      }
      expect((await grpcWeb(server.port, tokenize, envelope(0, badUtf8Tokenize))).status).toBe(
        grpc.status.INVALID_ARGUMENT,
      );
    });

    it("over Connect, unary and streaming, as the JSON codec already answered", async () => {
      const unary = await connectUnary(server.port, tokenize, badUtf8Tokenize);
      expect(unary.status).toBe(400);
      expect(unary.json.code).toBe("invalid_argument");
      const json = await connectUnary(server.port, tokenize, Buffer.from("{not json"), "application/json");
      expect(json.json.code).toBe("invalid_argument");
      for (const bytes of [truncated, badUtf8]) {
        expect((await connectStream(server.port, generate, envelope(0, bytes))).code).toBe(
          "invalid_argument",
        );
      }
    });
  });

  describe("an unknown method or service is UNIMPLEMENTED", () => {
    const paths = ["/kvpark.v1.InferenceService/NoSuchMethod", "/no.such.Service/Call"];

    it("gRPC: HTTP 200 with grpc-status 12, and grpc-js reports UNIMPLEMENTED", async () => {
      for (const path of paths) {
        const r = await rawGrpc(server.port, path, envelope(0, new Uint8Array()));
        expect(r.status).toBe(200);
        expect(grpcStatus(r)).toBe(grpc.status.UNIMPLEMENTED);
        expect(decodeURIComponent(String(r.trailers["grpc-message"]))).toContain(path.slice(1));
      }
      const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
      const err = await new Promise<grpc.ServiceError>((resolve) =>
        client.makeUnaryRequest(
          paths[1],
          (x: Buffer) => x,
          (x: Buffer) => x,
          Buffer.alloc(0),
          bearer(),
          (e) => resolve(e!),
        ),
      );
      expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
      expect(err.details).toContain("no.such.Service/Call");
      client.close();
    });

    it("gRPC-Web: grpc-status 12", async () => {
      for (const path of paths) {
        const r = await grpcWeb(server.port, path, envelope(0, new Uint8Array()));
        expect(r.status).toBe(grpc.status.UNIMPLEMENTED);
      }
    });

    it("Connect: HTTP 404 with the error JSON `unimplemented`; Connect clients report Unimplemented", async () => {
      for (const path of paths) {
        const r = await connectUnary(server.port, path, Buffer.from("{}"), "application/json");
        expect(r.status).toBe(404);
        expect(r.json.code).toBe("unimplemented");
      }
      // A service the server does not have, called through connect-es: unary and streaming.
      const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
      const elsewhere = <M extends { parent: object }>(method: M): M => ({
        ...method,
        parent: { ...method.parent, typeName: "no.such.InferenceService" },
      });
      const info = elsewhere(ModelService.method.info);
      const unary = await transport
        .unary(info, undefined, undefined, { authorization: AUTH }, {})
        .catch((e: unknown) => ConnectError.from(e));
      expect((unary as ConnectError).code).toBe(Code.Unimplemented);
      const generate = elsewhere(InferenceService.method.generate);
      const stream = await (async () => {
        const res = await transport.stream(
          generate,
          undefined,
          undefined,
          { authorization: AUTH },
          (async function* () {
            yield { prompt: { kind: { case: "text" as const, value: "hi" } } };
          })(),
        );
        for await (const _ of res.message) void _;
      })().catch((e: unknown) => ConnectError.from(e));
      expect((stream as ConnectError).code).toBe(Code.Unimplemented);
    });
  });

  describe("an envelope flags byte other than 0 or 1 is INTERNAL", () => {
    const generate = "/kvpark.v1.InferenceService/Generate";

    it("gRPC: 0x80 and reserved bits are refused before the message is used", async () => {
      const ok = await rawGrpc(server.port, generate, envelope(0, generateBytes));
      expect(grpcStatus(ok)).toBe(grpc.status.OK);
      for (const flags of [0x80, 0x02, 0x04]) {
        const r = await rawGrpc(server.port, generate, envelope(flags, generateBytes));
        expect(grpcStatus(r)).toBe(grpc.status.INTERNAL);
        expect(decodeURIComponent(String(r.trailers["grpc-message"] ?? r.headers["grpc-message"]))).toContain(
          `flags 0x${flags.toString(16).padStart(2, "0")}`,
        );
      }
    });

    it("gRPC-Web: a request with the trailer flag 0x80 is refused, not skipped", async () => {
      expect((await grpcWeb(server.port, generate, envelope(0x80, generateBytes))).status).toBe(
        grpc.status.INTERNAL,
      );
    });

    it("Connect: the end-of-stream flag 0x02 in a request is refused", async () => {
      expect((await connectStream(server.port, generate, envelope(0x02, generateBytes))).code).toBe(
        "internal",
      );
    });
  });

  describe("PrefillStream: a handle after the first message is INVALID_ARGUMENT", () => {
    it("over grpc-js", async () => {
      const call = (
        inference.prefillStream as (
          md: grpc.Metadata,
        ) => grpc.ClientDuplexStream<unknown, PrefillStreamResponse>
      )(bearer());
      const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
        call.on("data", () => undefined);
        call.on("error", resolve);
        call.on("end", () => reject(new Error("the call succeeded")));
        call.write({ chunk: { case: "tokens", value: { ids: [1, 2, 3] } } });
        call.write({ handle: "ph_0123", chunk: { case: "tokens", value: { ids: [4, 5] } } });
        call.end();
      });
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details).toContain("requests[1].handle");
    });

    it("over Connect", async () => {
      const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "2" });
      const client = createClient(InferenceService, transport);
      async function* requests() {
        yield { chunk: { case: "tokens" as const, value: { ids: [1, 2, 3] } } };
        yield { chunk: { case: "text" as const, value: "more" } };
        yield { handle: "ph_0123", chunk: { case: "text" as const, value: "and more" } };
      }
      const err = await (async () => {
        for await (const _ of client.prefillStream(requests(), { headers: { authorization: AUTH } })) void _;
      })().catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).rawMessage).toContain("requests[2].handle");
    });
  });

  it("a stop string's length is counted in code points", async () => {
    const generate = (stop: string) =>
      serverStream<GenerateResponse>(
        inference,
        "generate",
        create(GenerateRequestSchema, {
          prompt: { kind: { case: "text", value: "hi" } },
          sampling: { maxTokens: 1, stop: [stop] },
        }),
        { metadata: bearer() },
      );
    // 256 characters outside the BMP: 512 UTF-16 units.
    const msgs = await generate("😀".repeat(256));
    expect(msgs.at(-1)!.event.case).toBe("finished");
    const err = (await generate("😀".repeat(257)).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toContain("sampling.stop[0]: must have 1 to 256 characters");
  });

  describe("error messages quote at most a few dozen characters of client input", () => {
    const huge = "m".repeat(1024 * 1024);

    it("over grpc-js: a 1 MB model name or handle comes back cut", async () => {
      const model = (await serverStream(
        inference,
        "generate",
        create(GenerateRequestSchema, { model: huge, prompt: { kind: { case: "text", value: "hi" } } }),
        { metadata: bearer() },
      ).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
      expect(model.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(model.details).toMatch(
        /^model: unknown model "m{40}…" \(1048576 characters\); this server serves/,
      );
      expect(model.details.length).toBeLessThan(200);
      const handle = (await serverStream(
        inference,
        "generate",
        create(GenerateRequestSchema, { handle: huge }),
        { metadata: bearer() },
      ).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
      expect(handle.code).toBe(grpc.status.NOT_FOUND);
      expect(handle.details).toBe(
        `handle: unknown or expired handle "${"m".repeat(40)}…" (1048576 characters)`,
      );
    });

    it("over Connect, for PrefillStream's handle", async () => {
      const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "2" });
      const client = createClient(InferenceService, transport);
      async function* requests() {
        yield { handle: huge };
      }
      const err = await (async () => {
        for await (const _ of client.prefillStream(requests(), { headers: { authorization: AUTH } })) void _;
      })().catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError).code).toBe(Code.NotFound);
      expect((err as ConnectError).rawMessage.length).toBeLessThan(120);
    });
  });
});
