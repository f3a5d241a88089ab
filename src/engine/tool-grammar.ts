/**
 * The grammar of a forced tool call: the model family's literal text around a JSON object
 * `{"name": <tool>, "<argumentsKey>": <that tool's arguments>}` (a list of them for Mistral), as one
 * JSON Schema for the JSON part plus EBNF rules for the text around it.
 */
import { quote, toolParametersField } from "../constraint-spec.js";
import type { ConstraintSpec } from "../engine-ipc.js";
import { invalidField } from "../errors.js";
import { TOOL_CALL_SYNTAX } from "../model/tool-syntax.js";
import { jsonSafeStrings } from "./json-strings.js";
import { checkSchema } from "./schema-support.js";
import { mapSchema } from "./schema-walk.js";

type ToolCallSpec = Extract<ConstraintSpec, { kind: "tool_call" }>;
type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** The root rule of a tool-call grammar. */
export const TOOL_CALL_ROOT = "kvpark_tool_calls";
/** Between parallel calls of a format that writes one delimited call at a time (Hermes). */
export const PARALLEL_CALL_SEPARATOR = "\n";

/** Arguments of a tool that declares no parameters. */
const NO_PARAMETERS = { type: "object", properties: {} };

/**
 * A copy of `schema` whose local `$ref`s ("#", "#/...") point to the same places once the schema sits
 * at `base` (a JSON pointer, "#/...").
 */
export function rebaseRefs(schema: unknown, base: string): unknown {
  return mapSchema(schema, (node) => {
    const ref = node.$ref;
    if (typeof ref === "string" && (ref === "#" || ref.startsWith("#/"))) node.$ref = base + ref.slice(1);
    return node;
  });
}

/** A tool's parameters schema, parsed and checked; errors name the tool's parameters_json. */
export function toolParameters(parametersJson: string, index: number): unknown {
  const field = toolParametersField(index);
  if (parametersJson.trim() === "") return NO_PARAMETERS;
  let schema: unknown;
  try {
    schema = JSON.parse(parametersJson);
  } catch (err) {
    throw invalidField(field, `not valid JSON (${(err as Error).message})`);
  }
  if (!isObject(schema)) throw invalidField(field, "must be a JSON Schema object");
  checkSchema(schema, field, false);
  return jsonSafeStrings(schema, field, false);
}

/** Indexes (in the spec's list) of the tools a spec lets the model call. */
export function chosenTools(spec: ToolCallSpec): number[] {
  const choice = spec.choice;
  const all = spec.tools.map((_, i) => i);
  return choice === "required" ? all : all.filter((i) => spec.tools[i].name === choice.name).slice(0, 1);
}

const ebnfString = (text: string) => JSON.stringify(text);

/**
 * The JSON Schema of the calls' JSON (one call, or a list for formats that write a list) and the EBNF
 * rules around it, whose root is TOOL_CALL_ROOT and which refer to the schema's grammar as `root`.
 */
export function toolCallGrammar(spec: ToolCallSpec): { schema: unknown; rules: string } {
  const syntax = TOOL_CALL_SYNTAX[spec.format];
  if (!syntax) throw invalidField("prompt.chat.tools", `unknown tool call format ${quote(spec.format)}`);
  const chosen = chosenTools(spec);
  if (chosen.length === 0) throw invalidField("prompt.chat.tool_choice", "names no tool of the request");
  const key = syntax.argumentsKey;
  // Each tool's parameters sit under the root's $defs, so that their local $refs can be rebased there
  // (xgrammar resolves a $ref through objects only, not through the positions of a list).
  const defs: Json = {};
  const calls = chosen.map((i) => {
    const def = `kvpark_tool_${i}`;
    defs[def] = rebaseRefs(toolParameters(spec.tools[i].parametersJson, i), `#/$defs/${def}`);
    return {
      type: "object",
      properties: { name: { const: spec.tools[i].name }, [key]: { $ref: `#/$defs/${def}` } },
      required: ["name", key],
    };
  });
  const call = calls.length === 1 ? calls[0] : { anyOf: calls };
  const many = spec.choice === "required";
  const json = syntax.list
    ? { type: "array", items: call, minItems: 1, ...(many ? {} : { maxItems: 1 }) }
    : call;
  const schema = { ...json, $defs: defs };
  const around = (inner: string) =>
    [syntax.before && ebnfString(syntax.before), inner, syntax.after && ebnfString(syntax.after)]
      .filter(Boolean)
      .join(" ");
  // A format that delimits each call (Hermes) can carry several; one without delimiters only one.
  const repeat = many && !syntax.list && syntax.before !== "";
  const rules = repeat
    ? `${TOOL_CALL_ROOT} ::= kvpark_tool_call (${ebnfString(PARALLEL_CALL_SEPARATOR)} kvpark_tool_call)*\n` +
      `kvpark_tool_call ::= ${around("root")}\n`
    : `${TOOL_CALL_ROOT} ::= ${around("root")}\n`;
  return { schema, rules };
}
