import * as grpc from "@grpc/grpc-js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ServerReflection, type ServerReflectionResponse } from "../../gen/grpc/reflection/v1/reflection_pb";
import {
  GenerateRequestSchema,
  InferenceService,
  type GenerateResponse,
  type GenerateStarted,
} from "../../gen/kvpark/v1/inference_pb";
import {
  ModelService,
  ToolCallFormat,
  type DetokenizeResponse,
  type InfoResponse,
  type TokenizeResponse,
} from "../../gen/kvpark/v1/model_pb";
import type { PromptSchema } from "../../gen/kvpark/v1/common_pb";
import { grpcJsClient, serverStream, unary } from "../helpers/grpcjs";
import { startServer, type ServerProcess } from "../helpers/server";

const TOKEN = "tenant-a-secret-token-0001";

function bearer(): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${TOKEN}`);
  return md;
}

type PromptInit = MessageInitShape<typeof PromptSchema>;

describe("ModelService over gRPC", () => {
  let server: ServerProcess;
  let model: ReturnType<typeof grpcJsClient>;
  let inference: ReturnType<typeof grpcJsClient>;

  beforeAll(async () => {
    server = await startServer({ args: ["--auth-tokens", `tenant-a=${TOKEN}`, "--block-tokens", "32"] });
    model = grpcJsClient(ModelService, `127.0.0.1:${server.port}`);
    inference = grpcJsClient(InferenceService, `127.0.0.1:${server.port}`);
  });
  afterAll(async () => {
    model.close();
    inference.close();
    await server.stop();
  });

  const tokenize = (prompt: PromptInit) =>
    unary<TokenizeResponse>(model, "tokenize", { prompt }, { metadata: bearer() });
  const detokenize = (ids: number[], skipSpecialTokens = false) =>
    unary<DetokenizeResponse>(model, "detokenize", { ids, skipSpecialTokens }, { metadata: bearer() });

  /** Generate's greedy answer and its started message. */
  async function generate(prompt: PromptInit) {
    const msgs = await serverStream<GenerateResponse>(
      inference,
      "generate",
      create(GenerateRequestSchema, {
        prompt,
        sampling: { maxTokens: 6, temperature: 0 },
        cache: { persist: false },
      }),
      { metadata: bearer() },
    );
    const started = msgs[0].event.value as GenerateStarted;
    const ids = msgs.flatMap((m) => (m.event.case === "delta" ? m.event.value.tokenIds : []));
    return { started, ids };
  }

  it("Tokenize gives the ids Generate uses, for text, chat and token prompts", async () => {
    const text: PromptInit = { kind: { case: "text", value: "the quick brown fox" } };
    const chat: PromptInit = {
      kind: {
        case: "chat",
        value: {
          messages: [
            { role: "system", content: "Be brief." },
            { role: "user", content: "Name a colour." },
          ],
        },
      },
    };
    for (const prompt of [text, chat]) {
      const t = await tokenize(prompt);
      expect(t.ids.length).toBeGreaterThan(0);
      const direct = await generate(prompt);
      expect(direct.started.promptTokens).toBe(t.ids.length);
      // The same ids sent as tokens continue exactly as the prompt did (greedy decoding).
      const viaIds = await generate({ kind: { case: "tokens", value: { ids: t.ids } } });
      expect(viaIds.ids).toEqual(direct.ids);
    }
    const ids = [5, 6, 7, 300];
    const t = await tokenize({ kind: { case: "tokens", value: { ids } } });
    expect(t.ids).toEqual(ids);
    expect(t.rendered).toBe("");
  });

  it("Tokenize returns the chat template's output for chat prompts only", async () => {
    const chat = await tokenize({
      kind: { case: "chat", value: { messages: [{ role: "user", content: "Hello there" }] } },
    });
    // The generated models use the ChatML template.
    expect(chat.rendered).toContain("<|im_start|>user\nHello there<|im_end|>");
    expect(chat.rendered.endsWith("<|im_start|>assistant\n")).toBe(true);
    const back = await detokenize(chat.ids);
    expect(back.text).toBe(chat.rendered);
    const noPrompt = await tokenize({
      kind: {
        case: "chat",
        value: { messages: [{ role: "user", content: "Hello there" }], addGenerationPrompt: false },
      },
    });
    expect(noPrompt.rendered.endsWith("<|im_start|>assistant\n")).toBe(false);
    expect((await tokenize({ kind: { case: "text", value: "plain" } })).rendered).toBe("");
  });

  it("Tokenize refuses what Generate refuses, naming the field", async () => {
    const cases: [PromptInit | undefined, string][] = [
      [undefined, "prompt: required: set text, chat or tokens"],
      [
        { kind: { case: "tokens", value: { ids: [1, 99999999] } } },
        "prompt.tokens.ids[1]: token id 99999999",
      ],
      [
        { kind: { case: "chat", value: { messages: [] } } },
        "prompt.chat.messages: must hold at least one message",
      ],
    ];
    for (const [prompt, message] of cases) {
      const err = (await unary(model, "tokenize", { prompt }, { metadata: bearer() }).catch(
        (e: grpc.ServiceError) => e,
      )) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details).toContain(message);
    }
  });

  it("Detokenize turns ids into text, with or without special tokens, and checks the vocabulary", async () => {
    const t = await tokenize({ kind: { case: "text", value: "hello world" } });
    expect((await detokenize(t.ids, true)).text).toBe("hello world");
    const chat = await tokenize({
      kind: { case: "chat", value: { messages: [{ role: "user", content: "hello world" }] } },
    });
    const plain = (await detokenize(chat.ids, true)).text;
    expect(plain).not.toContain("<|im_start|>");
    expect(plain).toContain("hello world");
    expect((await detokenize([])).text).toBe("");
    const info = await unary<InfoResponse>(model, "info", {}, { metadata: bearer() });
    const err = (await detokenize([t.ids[0], info.vocabSize]).catch(
      (e: grpc.ServiceError) => e,
    )) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe(
      `ids[1]: token id ${info.vocabSize} is outside the vocabulary (size ${info.vocabSize})`,
    );
  });

  it("Info describes the served model", async () => {
    const info = await unary<InfoResponse>(model, "info", {}, { metadata: bearer() });
    const { started } = await generate({ kind: { case: "text", value: "hi" } });
    expect(info.model).toBe(started.model);
    expect(info.modelFingerprint).toBe(started.modelFingerprint);
    expect(info.modelFingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(info.modelType).toBe("qwen2");
    expect(info.contextTokens).toBe(8192);
    expect(info.blockTokens).toBe(32);
    expect(info.vocabSize).toBeGreaterThan(512);
    expect(info.chatTemplate).toBe(true);
    expect(info.toolCallFormat).toBe(ToolCallFormat.HERMES);
    expect(info.reasoning).toBe(false);
  });

  it("needs a token like the other kvpark services", async () => {
    for (const method of ["info", "tokenize", "detokenize"]) {
      const err = (await unary(model, method, {}).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    }
  });

  it("is listed by server reflection", async () => {
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: server.url }));
    async function* requests() {
      yield { messageRequest: { case: "listServices" as const, value: "*" } };
      yield { messageRequest: { case: "fileContainingSymbol" as const, value: "kvpark.v1.ModelService" } };
    }
    const answers: ServerReflectionResponse[] = [];
    for await (const res of client.serverReflectionInfo(requests(), {
      headers: { authorization: `Bearer ${TOKEN}` },
    }))
      answers.push(res);
    const names = (answers[0].messageResponse.value as { service: { name: string }[] }).service.map(
      (s) => s.name,
    );
    expect(names).toContain("kvpark.v1.ModelService");
    expect(answers[1].messageResponse.case).toBe("fileDescriptorResponse");
  });
});
