/**
 * How each model family writes a tool call in its output: the literal text around the JSON of the
 * calls, and the JSON's shape. The tool-call parser reads calls out of the output with it, and the
 * constrained decoder forces a call (tool_choice required or named) into exactly this form.
 */

/** A model family's tool-call format, as InfoResponse.tool_call_format states it. */
export type ToolCallFormat = "hermes" | "llama3_json" | "mistral";

/** The written form of tool calls in one format. */
export interface ToolCallSyntax {
  format: ToolCallFormat;
  /** Literal text before the JSON of the call(s). */
  before: string;
  /** Literal text after it. */
  after: string;
  /** Whether the JSON is a list of calls (else one object per before/after pair). */
  list: boolean;
  /** The key of a call object that holds its arguments object (the name is under "name"). */
  argumentsKey: "arguments" | "parameters";
}

/** Every known format. */
export const TOOL_CALL_SYNTAX: Readonly<Record<ToolCallFormat, ToolCallSyntax>> = {
  // Hermes, Qwen2.5, Qwen3: one <tool_call> element per call, each holding one JSON object.
  hermes: {
    format: "hermes",
    before: "<tool_call>\n",
    after: "\n</tool_call>",
    list: false,
    argumentsKey: "arguments",
  },
  // Llama 3.1+: the whole answer is one JSON object.
  llama3_json: { format: "llama3_json", before: "", after: "", list: false, argumentsKey: "parameters" },
  // Mistral: [TOOL_CALLS] then a JSON list of calls.
  mistral: { format: "mistral", before: "[TOOL_CALLS]", after: "", list: true, argumentsKey: "arguments" },
};
