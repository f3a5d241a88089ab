/**
 * Tool calls and reasoning in a model's output: which format a model writes (from its chat template and
 * vocabulary) and which markers its output carries. The streaming parser is in output-parser.ts and
 * exported from here.
 */
import { MARKERS } from "./output-parser";
import type { ToolCallFormat } from "./tool-syntax";

export { newToolCallId, type OutputEvent, OutputParser, type OutputParserOptions } from "./output-parser";

/**
 * The format a model writes tool calls in, from its chat template (the one used with tools: its
 * text, and whether it reads `tools`, as the tokenizer found when it compiled it) and its vocabulary;
 * null when the template does not take tools or writes calls in no known form.
 */
export function detectToolCallFormat(
  template: string | undefined,
  usesTools: boolean,
  hasToken: (token: string) => boolean,
): ToolCallFormat | null {
  if (template === undefined || !usesTools) return null;
  // Mistral writes calls after [TOOL_CALLS] (a control token of its tokenizer).
  if (template.includes(MARKERS.mistralCalls)) return "mistral";
  // Hermes, Qwen2.5, Qwen3: <tool_call> elements, also in Llama-based Hermes models.
  if (template.includes(MARKERS.hermesOpen)) return "hermes";
  // Llama 3.1+: tool results come back in the ipython role; calls are a JSON object, maybe after
  // <|python_tag|>.
  if (template.includes("ipython") && (template.includes(MARKERS.pythonTag) || hasToken(MARKERS.pythonTag))) {
    return "llama3_json";
  }
  return null;
}

/** Whether a model writes reasoning apart from its answer: its template or vocabulary knows `<think>`. */
export function detectReasoning(template: string | undefined, hasToken: (token: string) => boolean): boolean {
  if (
    template !== undefined &&
    (template.includes(MARKERS.thinkOpen) || template.includes(MARKERS.thinkClose))
  )
    return true;
  return hasToken(MARKERS.thinkOpen) && hasToken(MARKERS.thinkClose);
}

/** Whether a rendered prompt ends inside an opened `<think>` block (the output then starts in reasoning). */
export function promptOpensReasoning(prompt: string): boolean {
  return /<think>\s*$/.test(prompt);
}

/**
 * The literal markers the parser looks for in a model's output; those that are special tokens must
 * survive detokenization (`ModelTokenizer.specialIdsOf`, `keepSpecialIds`).
 */
export function outputMarkers(format: ToolCallFormat | null, reasoning: boolean): string[] {
  const markers: string[] = [];
  if (format === "hermes") markers.push(MARKERS.hermesOpen, MARKERS.hermesClose);
  if (format === "llama3_json") markers.push(MARKERS.pythonTag);
  if (format === "mistral") markers.push(MARKERS.mistralCalls, MARKERS.mistralCallId, MARKERS.mistralArgs);
  if (reasoning) markers.push(MARKERS.thinkOpen, MARKERS.thinkClose);
  return markers;
}
