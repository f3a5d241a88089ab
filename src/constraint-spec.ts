/**
 * Building the constraints of structured outputs in the front end (the engine enforces them; see
 * ConstraintSpec in engine-ipc.ts). This module loads neither xgrammar nor MLX.
 */
import type { ResponseFormat } from "../gen/kvpark/v1/inference_pb.js";
import type { ConstraintSpec, JsonSchema, ToolSpec } from "./engine-ipc.js";
import { invalidField } from "./errors.js";
import type { ToolCallFormat } from "./model/tool-syntax.js";

/** Largest JSON Schema text (response_format.json_schema.schema_json, a tool's parameters_json). */
export const SCHEMA_JSON_BYTES_MAX = 64 * 1024;

/** Code points of a client's value an error message quotes at most (as src/rpc/validation.ts does). */
const QUOTE_CHARS_MAX = 40;

/** A value from a client's schema as an error message quotes it: JSON, cut after QUOTE_CHARS_MAX code points. */
export function quote(value: unknown): string {
  const text = typeof value === "string" ? value : (JSON.stringify(value) ?? String(value));
  const chars = Array.from(text);
  if (chars.length <= QUOTE_CHARS_MAX) return JSON.stringify(value) ?? String(value);
  return `${JSON.stringify(chars.slice(0, QUOTE_CHARS_MAX).join("") + "…")} (${chars.length} characters)`;
}

/** Longest response_format.json_schema.name. */
export const SCHEMA_NAME_CHARS_MAX = 64;

/** The field a response_format schema comes from. */
export const SCHEMA_JSON_FIELD = "sampling.response_format.json_schema.schema_json";

/**
 * SamplingParams.response_format as a constraint: undefined for free text, errors that name the field
 * for a schema that is missing, too long or not JSON. (Whether the engine can compile the schema is
 * known only there; it answers INVALID_ARGUMENT naming the same field.)
 */
export function responseFormatConstraint(format: ResponseFormat | undefined): ConstraintSpec | undefined {
  const f = format?.format;
  switch (f?.case) {
    case undefined:
    case "text":
      return undefined;
    case "jsonObject":
      return { kind: "json_object" };
    case "jsonSchema": {
      const { name, schemaJson, strict } = f.value;
      if (name.length > SCHEMA_NAME_CHARS_MAX) {
        throw invalidField(
          "sampling.response_format.json_schema.name",
          `longer than ${SCHEMA_NAME_CHARS_MAX} characters`,
        );
      }
      if (schemaJson.trim() === "")
        throw invalidField(SCHEMA_JSON_FIELD, "required: the JSON Schema as JSON text");
      if (Buffer.byteLength(schemaJson, "utf8") > SCHEMA_JSON_BYTES_MAX) {
        throw invalidField(SCHEMA_JSON_FIELD, `longer than ${SCHEMA_JSON_BYTES_MAX} bytes`);
      }
      let schema: unknown;
      try {
        schema = JSON.parse(schemaJson);
      } catch (err) {
        throw invalidField(SCHEMA_JSON_FIELD, `not valid JSON (${(err as Error).message})`);
      }
      if (!isJsonSchema(schema))
        throw invalidField(SCHEMA_JSON_FIELD, "must be a JSON Schema: an object or a boolean");
      return { kind: "json_schema", schema, strict };
    }
  }
}

/** Whether parsed JSON has a JSON Schema's form: an object or a boolean. */
function isJsonSchema(value: unknown): value is JsonSchema {
  return typeof value === "boolean" || (typeof value === "object" && value !== null && !Array.isArray(value));
}

/** The field a tool's parameters come from in a Generate request, for error messages. */
export const toolParametersField = (index: number): string => `prompt.chat.tools[${index}].parameters_json`;

/**
 * The constraint that forces a tool call (tool_choice REQUIRED, or a tool's name), in the written form
 * of `format`, with each call's arguments constrained by its tool's parameters schema. `tools` are the
 * request's tools in request order (error messages name a tool by its index there); their schemas are
 * parsed and checked by the engine, which names `prompt.chat.tools[i].parameters_json` when one cannot
 * be compiled.
 */
export function toolCallConstraint(
  format: ToolCallFormat,
  tools: readonly ToolSpec[],
  choice: "required" | { name: string },
): ConstraintSpec {
  if (tools.length === 0)
    throw invalidField("prompt.chat.tools", "a required tool call needs at least one tool");
  if (choice !== "required" && !tools.some((t) => t.name === choice.name)) {
    throw invalidField("prompt.chat.tool_choice.tool_name", `no tool is named ${quote(choice.name)}`);
  }
  tools.forEach((t, i) => {
    if (Buffer.byteLength(t.parametersJson, "utf8") > SCHEMA_JSON_BYTES_MAX) {
      throw invalidField(toolParametersField(i), `longer than ${SCHEMA_JSON_BYTES_MAX} bytes`);
    }
  });
  return {
    kind: "tool_call",
    format,
    tools: tools.map(({ name, parametersJson }) => ({ name, parametersJson })),
    choice: choice === "required" ? "required" : { name: choice.name },
  };
}
