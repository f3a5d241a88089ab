/**
 * Seeded coding-agent sessions: what an agent (a CLI coding assistant) sends to an inference server.
 * Each session has a long system prompt with tool definitions, a task, then rounds of model answer and
 * tool result (files read, searches, test runs, edits). The script also edits an earlier message of a
 * running conversation (an agent replacing a stale tool result with the file's new contents), restarts
 * the server and resumes a session, and interleaves two sessions of the same agent. The same seed
 * always yields the same script.
 */
import { Rng } from "../lib/util";

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
}

/** One step of a replay. */
export type ReplayStep =
  /** Send the session's messages to Generate; the answer is appended as an assistant message. */
  | { kind: "generate"; session: string; label: string }
  /** Append a message (a tool result or a user message). */
  | { kind: "append"; session: string; message: ChatMessage }
  /** Replace the message at `index` (0 is the system prompt). */
  | { kind: "edit"; session: string; index: number; message: ChatMessage }
  /** Stop the server and start it again on the same data directory. */
  | { kind: "restart" };

export interface ScriptOptions {
  seed: number;
  /** Scales every generated text (1 = full size: a ~2.5k-token system prompt, files of ~300-900 tokens). */
  scale: number;
  /** Tool rounds of session A; session B gets about two thirds of that. */
  rounds: number;
}

const WORDS = (
  "cache block store index key value token layer prefix restore persist budget evict segment record " +
  "checksum header payload stream request response engine model tensor queue batch writer reader " +
  "config option limit tenant session handle chunk offset length buffer error status result parse " +
  "encode decode render template message server client channel deadline retry metric span trace"
).split(" ");

const VERBS = "get set load save read write open close find build check apply merge split count".split(" ");

function camel(rng: Rng, parts: number): string {
  const w = Array.from({ length: parts }, () => rng.pick(WORDS));
  return w.map((x, i) => (i === 0 ? x : x[0].toUpperCase() + x.slice(1))).join("");
}

function pascal(rng: Rng, parts: number): string {
  const s = camel(rng, parts);
  return s[0].toUpperCase() + s.slice(1);
}

function sentence(rng: Rng, words: number): string {
  const w = Array.from({ length: words }, () => rng.pick(WORDS));
  return w.join(" ").replace(/^./, (c) => c.toUpperCase()) + ".";
}

const TOOL_NAMES = [
  ["read_file", "Reads a file of the workspace and returns its contents with line numbers."],
  ["write_file", "Writes a file, replacing its contents. Creates missing parent directories."],
  ["edit_file", "Replaces an exact string in a file with another. Fails when the string is not unique."],
  ["list_directory", "Lists the entries of a directory, with sizes, recursively up to a depth."],
  ["search", "Searches the workspace for a regular expression and returns matching lines with context."],
  ["run_command", "Runs a shell command in the workspace and returns its exit code, stdout and stderr."],
  ["run_tests", "Runs the test suite or a subset of it and returns a summary with failures."],
  ["git_diff", "Shows the uncommitted changes of the workspace as a unified diff."],
  ["web_fetch", "Fetches a URL and returns its text content, converted from HTML to Markdown."],
  ["todo_write", "Replaces the task list the agent keeps for the user with the given items."],
] as const;

function toolDefinitions(rng: Rng, scale: number): string {
  return TOOL_NAMES.map(([name, description]) => {
    const properties: Record<string, { type: string; description: string }> = {};
    const n = Math.max(1, Math.round(rng.int(2, 5) * Math.min(1, scale * 1.5)));
    for (let i = 0; i < n; i++) {
      properties[camel(rng, 2)] = {
        type: rng.pick(["string", "integer", "boolean"]),
        description: sentence(rng, rng.int(6, 14)),
      };
    }
    return JSON.stringify({
      type: "function",
      function: {
        name,
        description: `${description} ${sentence(rng, Math.round(rng.int(10, 30) * scale))}`,
        parameters: { type: "object", properties, required: Object.keys(properties).slice(0, 1) },
      },
    });
  }).join("\n");
}

function systemPrompt(rng: Rng, scale: number): string {
  const rules = Array.from(
    { length: Math.max(3, Math.round(24 * scale)) },
    (_, i) => `${i + 1}. ${sentence(rng, rng.int(12, 28))}`,
  );
  return [
    "You are a coding agent working in the user's repository. You read code before changing it, make",
    "small verified edits, run the tests, and report what you did. Follow these rules:",
    ...rules,
    "",
    "# Tools",
    "",
    "You may call one or more functions to assist with the user query.",
    "",
    "You are provided with function signatures within <tools></tools> XML tags:",
    "<tools>",
    toolDefinitions(rng, scale),
    "</tools>",
    "",
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.",
  ].join("\n");
}

/** A plausible TypeScript source file of about `lines` lines. */
function sourceFile(rng: Rng, lines: number): string {
  const out: string[] = [`import { ${pascal(rng, 2)} } from "./${camel(rng, 1)}";`, ""];
  while (out.length < lines) {
    const name = `${rng.pick(VERBS)}${pascal(rng, 2)}`;
    const args = Array.from(
      { length: rng.int(1, 3) },
      () => `${camel(rng, 1)}: ${rng.pick(["number", "string", "Buffer", pascal(rng, 1)])}`,
    );
    out.push(`/** ${sentence(rng, rng.int(6, 16))} */`);
    out.push(
      `export function ${name}(${args.join(", ")}): ${rng.pick(["number", "boolean", "void", pascal(rng, 2)])} {`,
    );
    for (let i = rng.int(2, 8); i > 0; i--) {
      const v = camel(rng, 2);
      switch (rng.int(0, 3)) {
        case 0:
          out.push(`  const ${v} = ${camel(rng, 1)}.${rng.pick(VERBS)}(${rng.int(0, 4096)});`);
          break;
        case 1:
          out.push(`  if (${v} > ${rng.int(1, 64)}) throw new RangeError("${sentence(rng, 5)}");`);
          break;
        case 2:
          out.push(`  for (const ${v} of ${camel(rng, 2)}) total += ${v}.length;`);
          break;
        default:
          out.push(`  // ${sentence(rng, rng.int(5, 12))}`);
      }
    }
    out.push(`  return ${camel(rng, 1)};`, "}", "");
  }
  return out.map((l, i) => `${String(i + 1).padStart(4)}  ${l}`).join("\n");
}

function testOutput(rng: Rng, lines: number): string {
  const out: string[] = [];
  while (out.length < lines) {
    const file = `src/${camel(rng, 1)}/${camel(rng, 2)}.spec.ts`;
    const pass = rng.next() < 0.8;
    out.push(`${pass ? "PASS" : "FAIL"} ${file} (${(rng.next() * 5).toFixed(2)} s)`);
    for (let i = rng.int(2, 6); i > 0; i--)
      out.push(`  ${pass ? "✓" : "✕"} ${sentence(rng, rng.int(4, 9))} (${rng.int(1, 300)} ms)`);
    if (!pass) {
      out.push(`  ● ${pascal(rng, 2)} › ${sentence(rng, 5)}`, "", `    expect(received).toBe(expected)`, "");
      out.push(`    Expected: ${rng.int(0, 9999)}`, `    Received: ${rng.int(0, 9999)}`, "");
    }
  }
  out.push(`Tests: ${rng.int(0, 5)} failed, ${rng.int(40, 400)} passed`);
  return out.join("\n");
}

function searchResults(rng: Rng, lines: number): string {
  return Array.from(
    { length: lines },
    () =>
      `src/${camel(rng, 1)}/${camel(rng, 2)}.ts:${rng.int(1, 900)}:  ${rng.pick(VERBS)}${pascal(rng, 2)}(${camel(rng, 1)});`,
  ).join("\n");
}

function toolResult(rng: Rng, scale: number): { content: string; what: string } {
  const r = rng.next();
  const n = (lo: number, hi: number) => Math.max(3, Math.round(rng.int(lo, hi) * scale));
  if (r < 0.45) return { content: sourceFile(rng, n(30, 90)), what: "file read" };
  if (r < 0.65) return { content: testOutput(rng, n(15, 45)), what: "test run" };
  if (r < 0.85) return { content: searchResults(rng, n(8, 30)), what: "search" };
  return {
    content: `Edited ${camel(rng, 1)}/${camel(rng, 2)}.ts: replaced 1 occurrence.`,
    what: "edit confirmation",
  };
}

/**
 * The replay script. Session A: task, rounds of answer and tool result; in the middle it edits an
 * earlier tool result. Session B (same agent, so the same system prompt) starts after A's second round
 * and alternates with A. After two thirds of A the server restarts and both sessions resume.
 */
export function agentScript(o: ScriptOptions): ReplayStep[] {
  const rng = new Rng(o.seed);
  const system: ChatMessage = { role: "system", content: systemPrompt(rng, o.scale) };
  const steps: ReplayStep[] = [];
  const lengths: Record<string, number> = { A: 0, B: 0 };
  const append = (session: string, message: ChatMessage) => {
    steps.push({ kind: "append", session, message });
    lengths[session]++;
  };
  const generate = (session: string, label: string) => {
    steps.push({ kind: "generate", session, label });
    lengths[session]++; // the answer
  };
  const task = () =>
    `${sentence(rng, rng.int(10, 20))} The failing test is in src/${camel(rng, 1)}/${camel(rng, 2)}.spec.ts. ${sentence(rng, rng.int(8, 16))}`;

  const roundsA = o.rounds;
  const roundsB = Math.max(2, Math.round((o.rounds * 2) / 3));
  const editAt = Math.max(3, Math.floor(roundsA / 2));
  const restartAt = Math.max(editAt + 1, Math.floor((roundsA * 2) / 3));
  const readIndex: Record<string, number[]> = { A: [], B: [] };

  append("A", system);
  append("A", { role: "user", content: task() });
  generate("A", "first request");
  let b = 0;
  for (let round = 1; round <= roundsA; round++) {
    const result = toolResult(rng, o.scale);
    readIndex.A.push(lengths.A);
    append("A", { role: "tool", content: result.content });
    if (round === editAt) {
      // The agent rewrote a file it read earlier and replaces the stale copy in its context.
      const index = readIndex.A[Math.floor(readIndex.A.length / 3)];
      steps.push({
        kind: "edit",
        session: "A",
        index,
        message: { role: "tool", content: sourceFile(rng, Math.round(60 * o.scale) + 3) },
      });
      generate("A", `${result.what}, earlier message edited`);
    } else if (round === restartAt + 1) {
      generate("A", `${result.what}, resumed after restart`);
    } else {
      generate("A", result.what);
    }
    if (round >= 2 && b < roundsB) {
      if (b === 0) {
        append("B", system);
        append("B", { role: "user", content: task() });
        generate("B", "first request (same system prompt)");
      } else {
        const r = toolResult(rng, o.scale);
        append("B", { role: "tool", content: r.content });
        generate(
          "B",
          round === restartAt + 1 ? `${r.what}, resumed after restart` : `${r.what}, interleaved`,
        );
      }
      b++;
    }
    if (round === restartAt) steps.push({ kind: "restart" });
  }
  return steps;
}
