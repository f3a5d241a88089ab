import type Anthropic from "@anthropic-ai/sdk";
import Ajv from "ajv";
import type { MessageInitShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  ToolChoiceMode,
  type ChatMessageSchema,
  type PromptSchema,
  type ToolChoiceSchema,
} from "../../gen/kvpark/v1/common_pb";
import { InferenceService, type GenerateResponse } from "../../gen/kvpark/v1/inference_pb";
import { ModelService, type TokenizeResponse } from "../../gen/kvpark/v1/model_pb";
import { AGENT_TOOLS } from "../../bench/sections/agent";
import { idealReuse } from "../helpers/agent";
import { grpcJsClient, serverStream } from "../helpers/grpcjs";
import { startServer, testModel, type ServerProcess } from "../helpers/server";
import { ANTHROPIC_AGENT_TOOLS as TOOLS, TOKEN, anthropicClient, grpcCall } from "./anthropic-client";

const MODEL = "tiny";
const TURNS = 7;
const MAX_TOKENS = 96;
const SYSTEM = "You are a coding agent. Use the tools to inspect the repository.";

/** What a tool returns in the script: deterministic, so both servers see the same conversation. */
function runTool(name: string, input: unknown, turn: number): string {
  return `result of ${name} ${JSON.stringify(input)} at turn ${turn}: ${"ok ".repeat(10 + turn * 7)}`;
}

/**
 * The conversation as the kvpark chat prompt the server makes of it (system message, assistant tool
 * calls, one tool message per tool_result), for ModelService.Tokenize.
 */
function kvparkPrompt(
  messages: Anthropic.MessageParam[],
  choice: Anthropic.ToolChoice,
): MessageInitShape<typeof PromptSchema> {
  const out: MessageInitShape<typeof ChatMessageSchema>[] = [{ role: "system", content: SYSTEM }];
  for (const m of messages) {
    if (typeof m.content === "string") {
      out.push({ role: m.role, content: m.content });
    } else if (m.role === "assistant") {
      out.push({
        role: "assistant",
        content: m.content.flatMap((b) => (b.type === "text" ? [b.text] : [])).join("\n"),
        toolCalls: m.content.flatMap((b) =>
          b.type === "tool_use" ? [{ id: b.id, name: b.name, argumentsJson: JSON.stringify(b.input) }] : [],
        ),
      });
    } else {
      for (const b of m.content)
        if (b.type === "tool_result")
          out.push({ role: "tool", content: b.content as string, toolCallId: b.tool_use_id });
    }
  }
  const toolChoice: MessageInitShape<typeof ToolChoiceSchema> = {
    choice:
      choice.type === "tool"
        ? { case: "toolName", value: choice.name }
        : { case: "mode", value: ToolChoiceMode.NONE },
  };
  return { kind: { case: "chat", value: { messages: out, tools: AGENT_TOOLS, toolChoice } } };
}

interface Turn {
  /** The prompt's token ids (ModelService.Tokenize of the same conversation). */
  promptIds: number[];
  /** The answer's token ids (from the same turn run over gRPC Generate on the same server). */
  outputIds: number[];
  /** The ids of the same turn sampled with a seed (temperature 1) over gRPC on the same server. */
  seededIds: number[];
  /** The answer, without the tool-call ids (random per server). */
  answer: unknown[];
  stop: string | null;
  usage: Anthropic.Usage;
}

/** A turn's answer over gRPC Generate: its token ids, and its tool calls and text as the API gives them. */
async function generateOverGrpc(
  server: ServerProcess,
  prompt: MessageInitShape<typeof PromptSchema>,
  sampling: { temperature?: number; seed?: bigint } = {},
) {
  const client = grpcJsClient(InferenceService, `127.0.0.1:${server.port}`);
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${TOKEN}`);
  try {
    const responses = await serverStream<GenerateResponse>(
      client,
      "generate",
      { prompt, sampling: { maxTokens: MAX_TOKENS, ...sampling } },
      { metadata },
    );
    const ids: number[] = [];
    const answer: unknown[] = [];
    for (const { event: e } of responses) {
      if (e.case === "delta" || e.case === "reasoning" || e.case === "toolCall")
        ids.push(...e.value.tokenIds);
      if (e.case === "toolCall")
        answer.push({ name: e.value.name, input: JSON.parse(e.value.argumentsJson) });
    }
    return { ids, answer };
  } finally {
    client.close();
  }
}

/**
 * A scripted agent: the model calls a named tool on every turn but the last, the script answers.
 * Each turn also runs over gRPC Generate on the same server, for the answer's token ids, which the
 * Anthropic API does not return, and once more with seeded sampling (the Anthropic API takes no
 * seed), so that greedy and sampled outputs are both compared with a cache-off server's.
 */
async function agentLoop(server: ServerProcess): Promise<Turn[]> {
  const client = anthropicClient(server);
  const ajv = new Ajv();
  const validators = new Map(TOOLS.map((t) => [t.name, ajv.compile(t.input_schema)]));
  const messages: Anthropic.MessageParam[] = [
    { role: "user", content: "Find out why the tests fail and propose a fix." },
  ];
  const turns: Turn[] = [];
  for (let t = 0; t < TURNS; t++) {
    const last = t === TURNS - 1;
    // A named tool each turn: the call is forced into the tool's schema, and the turn ends after it.
    const tool_choice: Anthropic.ToolChoice = last
      ? { type: "none" }
      : { type: "tool", name: TOOLS[t % TOOLS.length].name };
    const params = { model: MODEL, system: SYSTEM, tools: TOOLS, tool_choice, messages: [...messages] };
    const prompt = kvparkPrompt(messages, tool_choice);
    const { ids } = await grpcCall<TokenizeResponse>(server, ModelService, "tokenize", { prompt });
    const { input_tokens: counted } = await client.messages.countTokens(params);
    expect(counted).toBe(ids.length);
    // Odd turns streamed, even ones whole.
    const request = { ...params, max_tokens: MAX_TOKENS };
    const msg =
      t % 2 === 1
        ? await client.messages.stream(request).finalMessage()
        : await client.messages.create(request);
    const u = msg.usage;
    expect(u.input_tokens + u.cache_read_input_tokens! + u.cache_creation_input_tokens!).toBe(counted);
    const uses = msg.content.filter((b): b is Anthropic.ToolUseBlock => b.type === "tool_use");
    const overGrpc = await generateOverGrpc(server, prompt);
    const seeded = await generateOverGrpc(server, prompt, { temperature: 1, seed: 17n });
    expect(overGrpc.answer).toEqual(uses.map((b) => ({ name: b.name, input: b.input })));
    expect(overGrpc.ids.length).toBe(u.output_tokens);
    turns.push({
      promptIds: ids,
      outputIds: overGrpc.ids,
      seededIds: seeded.ids,
      answer: msg.content.map((b) => (b.type === "tool_use" ? { name: b.name, input: b.input } : b)),
      stop: msg.stop_reason,
      usage: u,
    });
    if (last) {
      expect(uses).toEqual([]);
      break;
    }
    expect(msg.stop_reason).toBe("tool_use");
    expect(uses.map((c) => c.name)).toEqual([TOOLS[t % TOOLS.length].name]);
    for (const use of uses) expect(validators.get(use.name)!(use.input)).toBe(true);
    messages.push({ role: "assistant", content: msg.content as Anthropic.ContentBlockParam[] });
    messages.push({
      role: "user",
      content: uses.map((use) => ({
        type: "tool_result" as const,
        tool_use_id: use.id,
        content: runTool(use.name, use.input, t),
      })),
    });
  }
  return turns;
}

describe("an agent loop over the Anthropic API (official SDK), tools run by a scripted client", () => {
  let cached: ServerProcess;
  let uncached: ServerProcess;
  beforeAll(async () => {
    const model = testModel();
    const args = ["--auth-tokens", `anthropic=${TOKEN}`];
    [cached, uncached] = await Promise.all([
      startServer({ model, args: [...args, "--cost-model=false"] }),
      startServer({ model, args: [...args, "--cache=false"] }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([cached?.stop(), uncached?.stop()]);
  });

  it(`runs ${TURNS} turns, each reusing at least 99% of what an exact prefix cache could, with the answers of a cache-off server`, async () => {
    const withCache = await agentLoop(cached);
    const without = await agentLoop(uncached);
    expect(withCache.map((t) => [t.answer, t.stop])).toEqual(without.map((t) => [t.answer, t.stop]));
    expect(withCache.map((t) => t.usage.output_tokens)).toEqual(without.map((t) => t.usage.output_tokens));
    expect(withCache.map((t) => t.promptIds)).toEqual(without.map((t) => t.promptIds));
    expect(withCache.map((t) => t.outputIds)).toEqual(without.map((t) => t.outputIds));
    expect(withCache.map((t) => t.seededIds)).toEqual(without.map((t) => t.seededIds));
    for (let t = 1; t < withCache.length; t++) {
      const want = idealReuse(withCache[t].promptIds, withCache.slice(0, t));
      expect(want).toBeGreaterThan(0);
      expect(withCache[t].usage.cache_read_input_tokens).toBeGreaterThanOrEqual(Math.floor(0.99 * want));
    }
    // With the cache off nothing is read or written.
    expect(without.every((t) => t.usage.cache_read_input_tokens === 0)).toBe(true);
    expect(without.every((t) => t.usage.cache_creation_input_tokens === 0)).toBe(true);
  });
});
