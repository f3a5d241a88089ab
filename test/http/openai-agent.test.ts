import type { MessageInitShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import Ajv from "ajv";
import type OpenAI from "openai";
import type { ChatCompletionMessageParam } from "openai/resources/chat/completions";
import { AGENT_TOOLS } from "../../bench/sections/agent";
import { ToolChoiceMode, type ChatMessageSchema, type PromptSchema } from "../../gen/kvpark/v1/common_pb";
import { InferenceService, type GenerateResponse } from "../../gen/kvpark/v1/inference_pb";
import { ModelService, type TokenizeResponse } from "../../gen/kvpark/v1/model_pb";
import { idealReuse, type SeenTurn } from "../helpers/agent";
import { grpcJsClient, serverStream, unary } from "../helpers/grpcjs";
import { startServer, testModel, type ServerProcess } from "../helpers/server";
import { OPENAI_AGENT_TOOLS as TOOLS, TOKEN, openAiClient } from "./openai-client";

type KvMessage = MessageInitShape<typeof ChatMessageSchema>;
type Prompt = MessageInitShape<typeof PromptSchema>;

const TURNS = 7;
const SAMPLING = { max_tokens: 96, temperature: 1, seed: 17 };

/** What a tool returns in the script: deterministic, so both servers see the same conversation. */
function runTool(name: string, args: string, turn: number): string {
  return `result of ${name} ${args} at turn ${turn}: ${"ok ".repeat(10 + turn * 7)}`;
}

interface Turn {
  content: string | null;
  calls: { name: string; arguments: string }[];
  finish: string;
  usage: OpenAI.CompletionUsage;
  /** The same prompt in kvpark's terms, built apart from the server's conversion, for Tokenize and Generate. */
  prompt: Prompt;
}

/** A scripted agent over the OpenAI API: a named tool on every turn but the last, the script answers. */
async function agentLoop(server: ServerProcess): Promise<Turn[]> {
  const client = openAiClient(server);
  const ajv = new Ajv();
  const messages: ChatCompletionMessageParam[] = [
    { role: "system", content: "You are a coding agent. Use the tools to inspect the repository." },
    { role: "user", content: "Find out why the tests fail and propose a fix." },
  ];
  const kv: KvMessage[] = messages.map((m) => ({ role: m.role, content: m.content as string }));
  const turns: Turn[] = [];
  for (let t = 0; t < TURNS; t++) {
    const last = t === TURNS - 1;
    const name = TOOLS[t % TOOLS.length].function.name;
    const res = await client.chat.completions.create({
      model: "tiny",
      messages,
      tools: TOOLS,
      tool_choice: last ? "none" : { type: "function", function: { name } },
      ...SAMPLING,
    });
    const { message, finish_reason } = res.choices[0];
    const calls = (message.tool_calls ?? []).map((c) => {
      if (c.type !== "function") throw new Error(`a ${c.type} call`);
      return { id: c.id, name: c.function.name, arguments: c.function.arguments };
    });
    turns.push({
      content: message.content,
      calls: calls.map((c) => ({ name: c.name, arguments: c.arguments })),
      finish: finish_reason,
      usage: res.usage!,
      prompt: {
        kind: {
          case: "chat",
          value: {
            messages: [...kv],
            tools: AGENT_TOOLS,
            toolChoice: {
              choice: last ? { case: "mode", value: ToolChoiceMode.NONE } : { case: "toolName", value: name },
            },
          },
        },
      },
    });
    if (last) break;
    expect(finish_reason).toBe("tool_calls");
    expect(calls.map((c) => c.name)).toEqual([name]);
    const tool = TOOLS.find((x) => x.function.name === name)!;
    expect(ajv.validate(tool.function.parameters!, JSON.parse(calls[0].arguments))).toBe(true);
    messages.push(message);
    kv.push({
      role: "assistant",
      content: "",
      toolCalls: calls.map((c) => ({ id: c.id, name: c.name, argumentsJson: c.arguments })),
    });
    for (const call of calls) {
      const content = runTool(call.name, call.arguments, t);
      messages.push({ role: "tool", tool_call_id: call.id, content });
      kv.push({ role: "tool", content, toolCallId: call.id });
    }
  }
  return turns;
}

function bearer(token: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
}

/** Longest common prefix of two token sequences. */

describe("an agent loop over the OpenAI API, tools run by a scripted client", () => {
  let cached: ServerProcess;
  let uncached: ServerProcess;
  beforeAll(async () => {
    const model = testModel();
    const auth = ["--auth-tokens", `openai=${TOKEN}`];
    [cached, uncached] = await Promise.all([
      startServer({ model, args: [...auth, "--cost-model=false"] }),
      startServer({ model, args: [...auth, "--cache=false"] }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([cached?.stop(), uncached?.stop()]);
  });

  it(`runs ${TURNS} turns, each reusing at least 99% of what an exact prefix cache could, with the outputs of a cache-off server`, async () => {
    const withCache = await agentLoop(cached);
    const without = await agentLoop(uncached);
    const outputs = (turns: Turn[]) =>
      turns.map(({ content, calls, finish, usage }) => ({
        content,
        calls,
        finish,
        prompt: usage.prompt_tokens,
        completion: usage.completion_tokens,
      }));
    expect(outputs(withCache)).toEqual(outputs(without));
    expect(without.every((t) => t.usage.prompt_tokens_details!.cached_tokens === 0)).toBe(true);

    // The ideal: every turn's prompt ids (ModelService.Tokenize over gRPC) and output ids (the same
    // request as a gRPC Generate on the cache-off server, which must produce the same output), and
    // for each turn the longest prefix its prompt shares with an earlier turn's prompt + output,
    // less the prompt's last token, which Generate always computes.
    const auth = { metadata: bearer(TOKEN) };
    const model = grpcJsClient(ModelService, `127.0.0.1:${cached.port}`);
    const inference = grpcJsClient(InferenceService, `127.0.0.1:${uncached.port}`);
    const seen: SeenTurn[] = [];
    try {
      for (const [t, turn] of withCache.entries()) {
        const { ids } = await unary<TokenizeResponse>(model, "tokenize", { prompt: turn.prompt }, auth);
        expect(ids.length).toBe(turn.usage.prompt_tokens);
        const out = await serverStream<GenerateResponse>(
          inference,
          "generate",
          { prompt: turn.prompt, sampling: { maxTokens: 96, temperature: 1, seed: 17n } },
          auth,
        );
        const outputIds: number[] = [];
        const calls: { name: string; arguments: string }[] = [];
        for (const { event: e } of out) {
          if (e.case === "delta" || e.case === "reasoning" || e.case === "toolCall")
            outputIds.push(...e.value.tokenIds);
          if (e.case === "toolCall") calls.push({ name: e.value.name, arguments: e.value.argumentsJson });
        }
        expect(calls).toEqual(turn.calls);
        expect(outputIds.length).toBe(turn.usage.completion_tokens);
        if (t > 0) {
          const ideal = idealReuse(ids, seen);
          expect(ideal).toBeGreaterThan(0);
          expect(turn.usage.prompt_tokens_details!.cached_tokens).toBeGreaterThanOrEqual(
            Math.floor(0.99 * ideal),
          );
        }
        seen.push({ promptIds: ids, outputIds });
      }
    } finally {
      model.close();
      inference.close();
    }
  });
});
