// The front end stays responsive under prompts far over the model's context: text is measured
// against the context before it is tokenized, and long text is tokenized on worker threads, so
// health checks are answered while such prompts are refused.
import * as fs from "node:fs";
import * as path from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb";
import type { PrefillStreamRequestSchema } from "../../gen/kvpark/v1/inference_pb";
import { ModelService } from "../../gen/kvpark/v1/model_pb";
import { ModelTokenizer } from "../../src/model/tokenizer";
import { kvparkClients } from "../helpers/clients";
import { ROOT, startServer, testModel, type ServerProcess } from "../helpers/server";

const EIGHT_MIB = 8 * 1024 * 1024;
/** The tiny model's context (max_position_embeddings) and what the server tokenizes of it. */
const CONTEXT_TOKENS = 8192;
const TEXT_CHARS_MAX = CONTEXT_TOKENS * 16;
/**
 * Issue 14's acceptance criterion, a bound on a duration allowed here as the behaviour asked for: a
 * health check is answered within a second while such prompts are refused (before, checks waited up
 * to 15 s while the front end tokenized them).
 */
const HEALTH_MS_MAX = 1000;

/** Prose of `chars` characters, from the text the test model's tokenizer was learned from. */
function prose(chars: number): string {
  const corpus = fs.readFileSync(path.join(ROOT, "src/model-gen/corpus.txt"), "utf8");
  return corpus.repeat(Math.ceil(chars / corpus.length)).slice(0, chars);
}

describe("a responsive front end", () => {
  let server: ServerProcess;
  const huge = prose(EIGHT_MIB);

  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(() => server?.stop());

  it("answers health checks within a second while four 8 MiB prompts are refused", async () => {
    const { inference } = kvparkClients(server);
    // A probe has its own connection, as a load balancer's does.
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const viaGrpc = async () => {
      try {
        for await (const res of inference.generate({ prompt: { kind: { case: "text", value: huge } } }))
          void res;
        return "accepted";
      } catch (err) {
        const ce = ConnectError.from(err);
        return `${Code[ce.code]} ${ce.rawMessage}`;
      }
    };
    const viaOpenAi = async () => {
      const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", messages: [{ role: "user", content: huge }] }),
      });
      const { error } = (await res.json()) as { error: { message: string; param: string; code: string } };
      return `${res.status} ${error.code} ${error.param} ${error.message}`;
    };
    let settled = false;
    const prompts = Promise.all([viaGrpc(), viaOpenAi(), viaGrpc(), viaOpenAi()]).finally(
      () => (settled = true),
    );
    const checks: { status: Status; ms: number }[] = [];
    do {
      const started = performance.now();
      const { status } = await health.check({ service: "kvpark.v1.InferenceService" });
      checks.push({ status, ms: performance.now() - started });
    } while (!settled);

    const grpcRefusal = `OutOfRange prompt.text: ${EIGHT_MIB} characters cannot fit in the model's context of ${CONTEXT_TOKENS} tokens; at most ${TEXT_CHARS_MAX} characters (16 per token) are tokenized`;
    const chatChars = EIGHT_MIB + "user".length;
    const httpRefusal = `400 context_length_exceeded messages messages: ${chatChars} characters cannot fit in the model's context of ${CONTEXT_TOKENS} tokens; at most ${TEXT_CHARS_MAX} characters (16 per token) are tokenized`;
    expect(await prompts).toEqual([grpcRefusal, httpRefusal, grpcRefusal, httpRefusal]);
    expect(checks.length).toBeGreaterThan(0);
    expect(checks.filter((c) => c.status !== Status.SERVING || c.ms >= HEALTH_MS_MAX)).toEqual([]);
  });

  it("tokenizes long text and chats on its workers exactly as the model's tokenizer does", async () => {
    const tokenizer = ModelTokenizer.fromDir(testModel());
    const model = createClient(ModelService, createGrpcTransport({ baseUrl: server.url }));
    const text = prose(TEXT_CHARS_MAX - 1000);
    const viaText = await model.tokenize({ prompt: { kind: { case: "text", value: text } } });
    expect(viaText.ids).toEqual(tokenizer.encode(text, { addSpecialTokens: true }));

    const messages = [
      { role: "system", content: prose(2000) },
      { role: "user", content: prose(20_000) },
    ];
    const viaChat = await model.tokenize({ prompt: { kind: { case: "chat", value: { messages } } } });
    const expected = tokenizer.renderAndEncode(messages, { addGenerationPrompt: true, tools: [] });
    expect([viaChat.ids, viaChat.rendered]).toEqual([expected.ids, expected.prompt]);
  });

  it("refuses a PrefillStream piece too long for what is left of the context before tokenizing it", async () => {
    const { inference } = kvparkClients(server);
    const model = createClient(ModelService, createGrpcTransport({ baseUrl: server.url }));
    const head = prose(3000);
    const used = (await model.tokenize({ prompt: { kind: { case: "text", value: head } } })).ids.length;
    const room = CONTEXT_TOKENS - used;
    const piece = prose(room * 16 + 1);
    async function* requests(): AsyncGenerator<MessageInitShape<typeof PrefillStreamRequestSchema>> {
      yield { chunk: { case: "text", value: head } };
      yield { chunk: { case: "text", value: piece } };
    }
    const err = await (async () => {
      for await (const res of inference.prefillStream(requests())) void res;
    })().catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect([Code[(err as ConnectError).code], (err as ConnectError).rawMessage]).toEqual([
      "OutOfRange",
      `requests[1].text: ${piece.length} characters cannot fit in the ${room} tokens left of the model's context of ${CONTEXT_TOKENS} tokens; at most ${room * 16} characters (16 per token) are tokenized`,
    ]);
  });
});
