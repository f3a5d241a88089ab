import { type MessageInitShape } from "@bufbuild/protobuf";
import Ajv from "ajv";
import {
  ToolChoiceMode,
  type ChatMessageSchema,
  type ToolChoiceSchema,
  type PromptSchema,
} from "../../gen/kvpark/v1/common_pb";
import { FinishReason, InferenceService, type GenerateResponse } from "../../gen/kvpark/v1/inference_pb";
import { ModelService, type TokenizeResponse } from "../../gen/kvpark/v1/model_pb";
import { AGENT_TOOLS as TOOLS } from "../../bench/sections/agent";
import { idealReuse } from "../helpers/agent";
import { grpcJsClient, serverStream, unary } from "../helpers/grpcjs";
import { startServer, testModel, type ServerProcess } from "../helpers/server";

type Message = MessageInitShape<typeof ChatMessageSchema>;

const SAMPLING = { maxTokens: 96, temperature: 1, seed: 17n };
const TURNS = 7;

/** What a tool returns in the script: deterministic, so both servers see the same conversation. */
function runTool(name: string, argumentsJson: string, turn: number): string {
  return `result of ${name} ${argumentsJson} at turn ${turn}: ${"ok ".repeat(10 + turn * 7)}`;
}

interface Turn {
  promptIds: number[];
  outputIds: number[];
  reused: number;
  events: string[];
  finish: FinishReason;
}

type Client = ReturnType<typeof grpcJsClient>;

async function turn(
  inference: Client,
  model: Client,
  messages: Message[],
  choice: MessageInitShape<typeof ToolChoiceSchema>["choice"],
): Promise<Turn & { calls: { id: string; name: string; argumentsJson: string }[] }> {
  const prompt: MessageInitShape<typeof PromptSchema> = {
    kind: {
      case: "chat",
      value: { messages, tools: TOOLS, toolChoice: { choice } },
    },
  };
  const { ids } = await unary<TokenizeResponse>(model, "tokenize", { prompt });
  const responses = await serverStream<GenerateResponse>(inference, "generate", {
    prompt,
    sampling: SAMPLING,
  });
  const out = {
    promptIds: ids,
    outputIds: [] as number[],
    reused: 0,
    events: [] as string[],
    finish: FinishReason.UNSPECIFIED,
    calls: [] as { id: string; name: string; argumentsJson: string }[],
  };
  for (const r of responses) {
    const e = r.event;
    if (e.case === "started") {
      out.reused = e.value.cache!.ramTokens + e.value.cache!.ssdTokens;
      expect(e.value.promptTokens).toBe(ids.length);
    } else if (e.case === "delta" || e.case === "reasoning") {
      out.outputIds.push(...e.value.tokenIds);
      out.events.push(`${e.case}:${e.value.text}`);
    } else if (e.case === "toolCall") {
      out.calls.push({ id: e.value.id, name: e.value.name, argumentsJson: e.value.argumentsJson });
      out.outputIds.push(...e.value.tokenIds);
      out.events.push(`tool_call:${e.value.name}:${e.value.argumentsJson}`);
    } else if (e.case === "finished") {
      out.finish = e.value.finishReason;
      expect(e.value.usage!.completionTokens).toBeGreaterThan(0);
    }
  }
  return out;
}

/** A scripted agent: the model calls a tool on every turn but the last, the script answers. */
async function agentLoop(server: ServerProcess): Promise<Turn[]> {
  const inference = grpcJsClient(InferenceService, `127.0.0.1:${server.port}`);
  const model = grpcJsClient(ModelService, `127.0.0.1:${server.port}`);
  const ajv = new Ajv();
  const validators = new Map(TOOLS.map((t) => [t.name!, ajv.compile(JSON.parse(t.parametersJson!))]));
  const messages: Message[] = [
    { role: "system", content: "You are a coding agent. Use the tools to inspect the repository." },
    { role: "user", content: "Find out why the tests fail and propose a fix." },
  ];
  const turns: Turn[] = [];
  try {
    for (let t = 0; t < TURNS; t++) {
      const last = t === TURNS - 1;
      // A named tool each turn: the call is forced into the tool's schema, and the turn ends after it.
      const choice = last
        ? ({ case: "mode", value: ToolChoiceMode.NONE } as const)
        : ({ case: "toolName", value: TOOLS[t % TOOLS.length].name! } as const);
      const r = await turn(inference, model, messages, choice);
      turns.push(r);
      if (last) {
        expect(r.calls).toEqual([]);
        break;
      }
      expect(r.finish).toBe(FinishReason.TOOL_CALLS);
      expect(r.calls.map((c) => c.name)).toEqual([TOOLS[t % TOOLS.length].name]);
      for (const call of r.calls) {
        const validate = validators.get(call.name);
        expect(validate).toBeDefined();
        expect(validate!(JSON.parse(call.argumentsJson))).toBe(true);
      }
      messages.push({ role: "assistant", content: "", toolCalls: r.calls });
      for (const call of r.calls)
        messages.push({
          role: "tool",
          content: runTool(call.name, call.argumentsJson, t),
          toolCallId: call.id,
        });
    }
  } finally {
    inference.close();
    model.close();
  }
  return turns;
}

describe("an agent loop over gRPC (grpc-js), tools run by a scripted client", () => {
  let cached: ServerProcess;
  let uncached: ServerProcess;
  beforeAll(async () => {
    const model = testModel();
    [cached, uncached] = await Promise.all([
      startServer({ model, args: ["--cost-model=false"] }),
      startServer({ model, args: ["--cache=false"] }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([cached?.stop(), uncached?.stop()]);
  });

  it(`runs ${TURNS} turns, each reusing at least 99% of what an exact prefix cache could, with the outputs of a cache-off server`, async () => {
    const withCache = await agentLoop(cached);
    const without = await agentLoop(uncached);
    expect(withCache.map((t) => t.events)).toEqual(without.map((t) => t.events));
    expect(withCache.map((t) => t.outputIds)).toEqual(without.map((t) => t.outputIds));
    for (let t = 1; t < withCache.length; t++) {
      const want = idealReuse(withCache[t].promptIds, withCache.slice(0, t));
      expect(want).toBeGreaterThan(0);
      expect(withCache[t].reused).toBeGreaterThanOrEqual(Math.floor(0.99 * want));
    }
    expect(without.every((t) => t.reused === 0)).toBe(true);
  });
});
