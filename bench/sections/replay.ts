/**
 * Replays the seeded agent sessions (bench/replay/sessions.ts) through Generate as chat messages and
 * reports, per turn: TTFT, prompt tokens reused from RAM and from SSD, tokens recomputed, and the
 * ideal: the longest prefix of the prompt that any earlier request of the replay had as a prefix of
 * its prompt followed by its answer, less the last prompt token (which is always computed, since its
 * logits give the first new token). The ideal is computed here, from the prompt's tokens rendered and
 * tokenized with the model's own chat template and tokenizer, independently of the server's cache.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ModelTokenizer } from "../../src/model/tokenizer";
import { connect, generate, type Clients } from "../lib/client";
import type { ModelShape } from "../lib/model";
import { agentScript, type ChatMessage } from "../replay/sessions";
import { BenchServer } from "../lib/server";
import { dropPageCache, type Progress } from "../lib/util";

export interface ReplayOptions {
  model: ModelShape;
  seed: number;
  scale: number;
  rounds: number;
  answerTokens: number;
  /** RAM tier budget of the replay's server, in tokens of KV (sessions then also hit SSD). */
  ramTokens: number;
  workDir: string;
  progress: Progress;
}

export interface ReplayTurn {
  turn: number;
  session: string;
  label: string;
  promptTokens: number;
  idealTokens: number;
  ramTokens: number;
  ssdTokens: number;
  recomputedTokens: number;
  recomputeChosenTokens: number;
  serverTtftMs: number;
  clientTtftMs: number;
  restoreMs: number;
  prefillMs: number;
  completionTokens: number;
  /** Tokens of the session's previous prompt and answer that the re-rendered history did not reproduce. */
  templateLostTokens: number;
}

export interface ReplayResult {
  seed: number;
  scale: number;
  ramBytesMax: number;
  answerTokens: number;
  turns: ReplayTurn[];
  restartReadyMs: number[];
  totals: {
    promptTokens: number;
    idealTokens: number;
    reusedTokens: number;
    ramTokens: number;
    ssdTokens: number;
    recomputedTokens: number;
    templateLostTokens: number;
    reuseShareOfIdeal: number;
  };
  warnings: string[];
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export async function runReplay(o: ReplayOptions): Promise<ReplayResult> {
  const tokenizer = ModelTokenizer.fromDir(o.model.dir);
  const steps = agentScript({ seed: o.seed, scale: o.scale, rounds: o.rounds });
  const dataDir = path.join(o.workDir, "replay");
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.mkdirSync(dataDir, { recursive: true });
  const ramBytesMax = o.ramTokens * o.model.kvBytesPerToken;
  const args = ["--ram-bytes-max", String(ramBytesMax)];
  let server = await BenchServer.start({ dataDir, model: o.model.dir, args });
  let c: Clients = connect(server.url);
  const sessions = new Map<string, ChatMessage[]>();
  // Every sequence the server has seen: each request's prompt followed by its answer.
  const seen: number[][] = [];
  const previous = new Map<string, number[]>();
  const out: ReplayResult = {
    seed: o.seed,
    scale: o.scale,
    ramBytesMax,
    answerTokens: o.answerTokens,
    turns: [],
    restartReadyMs: [],
    totals: {
      promptTokens: 0,
      idealTokens: 0,
      reusedTokens: 0,
      ramTokens: 0,
      ssdTokens: 0,
      recomputedTokens: 0,
      templateLostTokens: 0,
      reuseShareOfIdeal: 0,
    },
    warnings: [],
  };
  const turnsTotal = steps.filter((s) => s.kind === "generate").length;
  try {
    for (const step of steps) {
      if (step.kind === "restart") {
        o.progress.log("replay: restarting the server (page cache dropped)");
        await server.stop();
        dropPageCache();
        server = await BenchServer.start({ dataDir, model: o.model.dir, args });
        c = connect(server.url);
        out.restartReadyMs.push(server.readyMs);
        continue;
      }
      const messages = sessions.get(step.session) ?? [];
      sessions.set(step.session, messages);
      if (step.kind === "append") {
        messages.push(step.message);
        continue;
      }
      if (step.kind === "edit") {
        messages[step.index] = step.message;
        continue;
      }
      const ids = tokenizer.renderAndEncode(
        messages.map((m) => ({ role: m.role, content: m.content })),
        { addGenerationPrompt: true },
      ).ids;
      let ideal = 0;
      for (const s of seen) ideal = Math.max(ideal, commonPrefix(ids, s));
      ideal = Math.min(ideal, ids.length - 1);
      const prev = previous.get(step.session);
      const templateLost =
        prev && !step.label.includes("edited") ? Math.max(0, prev.length - commonPrefix(ids, prev)) : 0;
      const r = await generate(
        c,
        { chat: messages.map((m) => ({ role: m.role, content: m.content })) },
        {
          maxTokens: o.answerTokens,
        },
      );
      if (r.promptTokens !== ids.length) {
        out.warnings.push(
          `turn ${out.turns.length + 1}: server counted ${r.promptTokens} prompt tokens, the bench ${ids.length}`,
        );
      }
      const answer = tokenizer.decode(r.completionIds, { skipSpecialTokens: true });
      messages.push({ role: "assistant", content: answer });
      const sequence = [...ids, ...r.completionIds];
      seen.push(sequence);
      previous.set(step.session, sequence);
      const turn: ReplayTurn = {
        turn: out.turns.length + 1,
        session: step.session,
        label: step.label,
        promptTokens: ids.length,
        idealTokens: ideal,
        ramTokens: r.cache.ramTokens,
        ssdTokens: r.cache.ssdTokens,
        recomputedTokens: r.cache.recomputedTokens,
        recomputeChosenTokens: r.cache.recomputeChosenTokens,
        serverTtftMs: r.timings.ttftMs,
        clientTtftMs: r.clientTtftMs,
        restoreMs: r.timings.restoreMs,
        prefillMs: r.timings.prefillMs,
        completionTokens: r.completionIds.length,
        templateLostTokens: templateLost,
      };
      out.turns.push(turn);
      o.progress.log(
        `replay: turn ${turn.turn}/${turnsTotal} ${step.session} (${step.label}): ${turn.promptTokens} tokens, ` +
          `reused ${turn.ramTokens} RAM + ${turn.ssdTokens} SSD of ideal ${ideal}, TTFT ${turn.serverTtftMs.toFixed(0)} ms`,
      );
    }
  } finally {
    await server.stop();
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
  const t = out.totals;
  for (const turn of out.turns) {
    t.promptTokens += turn.promptTokens;
    t.idealTokens += turn.idealTokens;
    t.ramTokens += turn.ramTokens;
    t.ssdTokens += turn.ssdTokens;
    t.recomputedTokens += turn.recomputedTokens;
    t.templateLostTokens += turn.templateLostTokens;
  }
  t.reusedTokens = t.ramTokens + t.ssdTokens;
  t.reuseShareOfIdeal = t.idealTokens > 0 ? t.reusedTokens / t.idealTokens : Number.NaN;
  return out;
}
