// An agent loop with tools, replayed against a server with the cache and one without, side by side:
// a scripted client sends a conversation with tool definitions, the model calls a named tool (forced
// by constrained decoding, so the random-weight model calls it like a real one), the script appends a
// tool result of a few hundred tokens, and the next turn goes out. Per turn: TTFT as the server
// measured it, and the prompt tokens reused from the cache.
import * as fs from "node:fs";
import * as path from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ChatMessageSchema, ToolSchema } from "../../gen/kvpark/v1/common_pb";
import { connect, type Clients } from "../lib/client";
import type { ModelShape } from "../lib/model";
import { BenchServer } from "../lib/server";
import { median, type Progress } from "../lib/util";

type Message = MessageInitShape<typeof ChatMessageSchema>;

/** The tools of the scripted agent (also the agent test's): enums and bounds keep forced calls short. */
export const AGENT_TOOLS: MessageInitShape<typeof ToolSchema>[] = [
  {
    name: "read_file",
    description: "Read a file of the repository",
    parametersJson: JSON.stringify({
      type: "object",
      properties: { path: { type: "string", enum: ["src/index.ts", "README.md", "package.json"] } },
      required: ["path"],
      additionalProperties: false,
    }),
  },
  {
    name: "run_tests",
    description: "Run the test suite, optionally one file",
    parametersJson: JSON.stringify({
      type: "object",
      properties: {
        file: { type: "string", enum: ["a.test.ts", "b.test.ts"] },
        verbose: { type: "boolean" },
      },
      required: ["verbose"],
      additionalProperties: false,
    }),
  },
  {
    name: "search",
    description: "Search the code",
    parametersJson: JSON.stringify({
      type: "object",
      properties: {
        query: { type: "string", maxLength: 12 },
        limit: { type: "integer", minimum: 1, maximum: 9 },
      },
      required: ["query", "limit"],
      additionalProperties: false,
    }),
  },
];

export interface AgentTurn {
  turn: number;
  promptTokens: number;
  /** Server-measured TTFT with the cache, and without it. */
  ttftMs: { cached: number[]; uncached: number[] };
  reusedTokens: number[];
}

export interface AgentResult {
  turns: AgentTurn[];
  runs: number;
  toolResultWords: number;
  table: string;
}

/** One run of the loop: per turn the prompt size, the server's TTFT and the reused tokens. */
async function loop(
  c: Clients,
  turns: number,
  words: number,
  seed: number,
): Promise<{ promptTokens: number; ttftMs: number; reused: number }[]> {
  const messages: Message[] = [
    { role: "system", content: "You are a coding agent. Use the tools to inspect the repository." },
    { role: "user", content: `Run ${seed}: find out why the tests fail and propose a fix.` },
  ];
  const out: { promptTokens: number; ttftMs: number; reused: number }[] = [];
  for (let t = 0; t < turns; t++) {
    const tool = AGENT_TOOLS[t % AGENT_TOOLS.length].name!;
    const stream = c.inference.generate({
      prompt: {
        kind: {
          case: "chat",
          value: { messages, tools: AGENT_TOOLS, toolChoice: { choice: { case: "toolName", value: tool } } },
        },
      },
      sampling: { maxTokens: 64, temperature: 1, seed: BigInt(seed) },
    });
    const calls: { id: string; name: string; argumentsJson: string }[] = [];
    let row = { promptTokens: 0, ttftMs: 0, reused: 0 };
    for await (const r of stream) {
      const e = r.event;
      if (e.case === "started") {
        row.promptTokens = e.value.promptTokens;
        row.reused = e.value.cache!.ramTokens + e.value.cache!.ssdTokens;
      } else if (e.case === "toolCall") calls.push(e.value);
      else if (e.case === "finished") row = { ...row, ttftMs: e.value.timings!.ttftMs };
    }
    out.push(row);
    messages.push({ role: "assistant", content: "", toolCalls: calls });
    for (const call of calls) {
      const body = Array.from({ length: words }, (_, i) => `line ${i} of ${call.name} at turn ${t}`).join(
        "\n",
      );
      messages.push({ role: "tool", content: body, toolCallId: call.id });
    }
  }
  return out;
}

export async function runAgent(o: {
  model: ModelShape;
  turns: number;
  runs: number;
  toolResultWords: number;
  workDir: string;
  progress: Progress;
}): Promise<AgentResult> {
  const dir = path.join(o.workDir, "agent");
  fs.rmSync(dir, { recursive: true, force: true });
  const cached = await BenchServer.start({ dataDir: path.join(dir, "on"), model: o.model.dir });
  const uncached = await BenchServer.start({
    dataDir: path.join(dir, "off"),
    model: o.model.dir,
    args: ["--cache=false"],
  });
  const turns: AgentTurn[] = Array.from({ length: o.turns }, (_, t) => ({
    turn: t + 1,
    promptTokens: 0,
    ttftMs: { cached: [], uncached: [] },
    reusedTokens: [],
  }));
  try {
    for (let run = 0; run < o.runs; run++) {
      o.progress.log(`agent: run ${run + 1} of ${o.runs}, ${o.turns} turns with and without the cache`);
      // Alternate which server goes first, so that neither always meets a warmer machine.
      const order = run % 2 === 0 ? [cached, uncached] : [uncached, cached];
      for (const server of order) {
        const rows = await loop(connect(server.url), o.turns, o.toolResultWords, 1000 + run);
        rows.forEach((r, t) => {
          turns[t].promptTokens = r.promptTokens;
          if (server === cached) {
            turns[t].ttftMs.cached.push(r.ttftMs);
            turns[t].reusedTokens.push(r.reused);
          } else turns[t].ttftMs.uncached.push(r.ttftMs);
        });
      }
    }
  } finally {
    await Promise.all([cached.stop(), uncached.stop()]);
  }
  const lines = [
    "| turn | prompt tokens | reused | TTFT, cache on | TTFT, cache off | off / on |",
    "| ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const t of turns) {
    const on = median(t.ttftMs.cached);
    const off = median(t.ttftMs.uncached);
    lines.push(
      `| ${t.turn} | ${t.promptTokens} | ${median(t.reusedTokens).toFixed(0)} | ${on.toFixed(0)} ms | ${off.toFixed(0)} ms | ${(off / on).toFixed(1)}x |`,
    );
  }
  return { turns, runs: o.runs, toolResultWords: o.toolResultWords, table: lines.join("\n") };
}
