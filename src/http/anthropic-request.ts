// The Anthropic Messages API's request body, checked field by field. Fields Anthropic defines that
// kvpark cannot honour are refused with a 400 naming them; fields that would not change the result
// are accepted and ignored.
import { PinKind, ToolChoiceMode } from "../../gen/kvpark/v1/common_pb.js";
import type { Config } from "../config.js";
import type { PinHint } from "../engine-ipc.js";
import { clientField } from "../rpc/quote.js";
import { pinHint, quoted } from "../rpc/validation.js";
import { HttpError } from "./api.js";

type Json = Record<string, unknown>;
/** Where a cache_control breakpoint sits: a system block, a tool, or a block of a message. */
export type Cut = { system: number } | { tool: number } | { message: number; block: number };

/** A cache_control breakpoint: the prompt's prefix up to and including its block is pinned. */
export interface Breakpoint {
  at: Cut;
  pin: PinHint;
  /** The block's path in the request, e.g. "messages[2].content[0]". */
  field: string;
}

export type Block =
  | { type: "text"; text: string }
  | { type: "thinking"; thinking: string }
  | { type: "tool_use"; id: string; name: string; input: Json }
  | { type: "tool_result"; toolUseId: string; content: string; isError: boolean };

/** A checked Messages request. */
export interface MessagesRequest {
  model: string;
  system: string[];
  tools: { name: string; description: string; schemaJson: string }[];
  toolChoice?: { mode: ToolChoiceMode } | { name: string };
  messages: { role: "user" | "assistant"; blocks: Block[] }[];
  breakpoints: Breakpoint[];
  /** The top-level cache_control (Anthropic's automatic caching): the whole prompt is pinned. */
  wholePromptPin?: { ttlSeconds: number };
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  stop: string[];
  stream: boolean;
  schemaJson?: string;
}

const bad = (field: string, problem: string) => new HttpError(400, `${field}: ${problem}`);
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

function object(v: unknown, field: string): Json {
  if (!isObject(v)) throw bad(field, "must be an object");
  return v;
}

function string(v: unknown, field: string): string {
  if (typeof v !== "string") throw bad(field, "must be a string");
  return v;
}

function number(v: unknown, field: string, min: number, max: number, integer = false): number {
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v)))
    throw bad(field, `must be ${integer ? "an integer" : "a number"}`);
  if (v < min || v > max) throw bad(field, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

function boolean(v: unknown, field: string): boolean {
  if (typeof v !== "boolean") throw bad(field, "must be a boolean");
  return v;
}

function array(v: unknown, field: string): unknown[] {
  if (!Array.isArray(v)) throw bad(field, "must be an array");
  return v;
}

const SERVER_TOOLS = "Anthropic's server tools run on Anthropic's servers";

/** Refuses any key of `o` that is not in `known`; `refused` says why a key Anthropic defines is not taken. */
function onlyKeys(o: Json, field: string, known: readonly string[], refused: Json = {}): void {
  for (const key of Object.keys(o)) {
    if (known.includes(key) || o[key] === undefined) continue;
    const at = clientField(field ? `${field}.${key}` : key);
    throw bad(at, typeof refused[key] === "string" ? refused[key] : "unknown field");
  }
}

const TOP_LEVEL = [
  "model",
  "messages",
  "max_tokens",
  "system",
  "tools",
  "tool_choice",
  "stop_sequences",
  "stream",
  "temperature",
  "top_p",
  "top_k",
  "thinking",
  "cache_control",
  "output_config",
  // Accepted and ignored: none of them changes what the model generates.
  "metadata",
  "service_tier",
  "speed",
  "inference_geo",
  "diagnostics",
];
const TOP_LEVEL_REFUSED = {
  container: `not supported: code execution containers are among ${SERVER_TOOLS}`,
  mcp_servers: "not supported: kvpark does not call MCP servers; run the tools in the client",
  context_management: "not supported: kvpark does not edit the context; send the messages to use",
};

const TTL_SECONDS: Record<string, number> = { "5m": 300, "1h": 3600 };

/** A cache_control value: null/absent, or an ephemeral breakpoint with its soft pin. */
function cacheControl(
  v: unknown,
  field: string,
  config: Config,
): { ttlSeconds: number; pin: PinHint } | null {
  if (v === undefined || v === null) return null;
  const o = object(v, field);
  onlyKeys(o, field, ["type", "ttl"]);
  if (o.type !== "ephemeral")
    throw bad(
      `${field}.type`,
      `must be "ephemeral", got ${typeof o.type === "string" ? quoted(o.type) : JSON.stringify(o.type)?.slice(0, 40)}`,
    );
  const ttl = o.ttl === undefined ? "5m" : string(o.ttl, `${field}.ttl`);
  const ttlSeconds = TTL_SECONDS[ttl];
  if (ttlSeconds === undefined) throw bad(`${field}.ttl`, `must be "5m" or "1h", got ${quoted(ttl)}`);
  const pin = pinHint(PinKind.SOFT, ttlSeconds, { kind: `${field}.type`, ttl: `${field}.ttl` }, config);
  return { ttlSeconds, pin };
}

const MEDIA = "kvpark serves a text-only model";

/** Text of a tool result's content: a string or text blocks. */
function toolResultText(v: unknown, field: string, mark: (cc: unknown) => void): string {
  if (v === undefined) return "";
  if (typeof v === "string") return v;
  return array(v, field)
    .map((item, k) => {
      const f = `${field}[${k}]`;
      const b = object(item, f);
      if (b.type !== "text")
        throw bad(`${f}.type`, `${quoted(String(b.type))} is not supported here (${MEDIA})`);
      onlyKeys(b, f, ["type", "text", "cache_control", "citations"]);
      if (b.citations != null && array(b.citations, `${f}.citations`).length > 0)
        throw bad(`${f}.citations`, "not supported");
      mark(b.cache_control);
      return string(b.text, `${f}.text`);
    })
    .join("\n");
}

/** One content block of a message; `mark` records its cache_control. */
function block(v: unknown, f: string, role: string, mark: (cc: unknown) => void): Block {
  const b = object(v, f);
  const type = string(b.type, `${f}.type`);
  const only = (role_: string) => {
    if (role !== role_)
      throw bad(
        `${f}.type`,
        `a ${type} block belongs in ${role_ === "user" ? "a user" : "an assistant"} message`,
      );
  };
  switch (type) {
    case "text":
      onlyKeys(b, f, ["type", "text", "cache_control", "citations"]);
      if (b.citations != null && array(b.citations, `${f}.citations`).length > 0)
        throw bad(`${f}.citations`, "not supported");
      mark(b.cache_control);
      return { type, text: string(b.text, `${f}.text`) };
    case "thinking":
      only("assistant");
      onlyKeys(b, f, ["type", "thinking", "signature"], {
        cache_control: "not allowed on a thinking block; mark a block after it",
      });
      return { type, thinking: string(b.thinking, `${f}.thinking`) };
    case "tool_use": {
      only("assistant");
      onlyKeys(b, f, ["type", "id", "name", "input", "cache_control", "caller", "toolset_name"]);
      if (b.caller != null && object(b.caller, `${f}.caller`).type !== "direct")
        throw bad(`${f}.caller`, `only direct calls are supported (${SERVER_TOOLS})`);
      if (b.toolset_name != null) throw bad(`${f}.toolset_name`, "not supported");
      mark(b.cache_control);
      const id = string(b.id, `${f}.id`);
      if (!id) throw bad(`${f}.id`, "must not be empty");
      return { type, id, name: string(b.name, `${f}.name`), input: object(b.input ?? {}, `${f}.input`) };
    }
    case "tool_result": {
      only("user");
      onlyKeys(b, f, ["type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"]);
      if (b.toolset_name != null) throw bad(`${f}.toolset_name`, "not supported");
      const isError = b.is_error !== undefined && boolean(b.is_error, `${f}.is_error`);
      mark(b.cache_control);
      const content = toolResultText(b.content, `${f}.content`, mark);
      return { type, toolUseId: string(b.tool_use_id, `${f}.tool_use_id`), content, isError };
    }
    case "image":
    case "document":
    case "search_result":
    case "container_upload":
      throw bad(`${f}.type`, `${type} blocks are not supported: ${MEDIA}; send text`);
    case "redacted_thinking":
      throw bad(`${f}.type`, "redacted_thinking blocks hold another provider's encrypted reasoning");
    default:
      if (type === "server_tool_use" || type.endsWith("_tool_result"))
        throw bad(`${f}.type`, `${type} blocks are not supported: ${SERVER_TOOLS}`);
      throw bad(`${f}.type`, `unknown block type ${quoted(type)}`);
  }
}

/** Records a cache_control value found at a block as a breakpoint. */
type Marker = (at: Cut, field: string) => (cacheControl: unknown) => void;

function systemBlocks(v: unknown, mark: Marker): string[] {
  if (v === undefined) return [];
  if (typeof v === "string") return [v];
  return array(v, "system").map((item, k) => {
    const f = `system[${k}]`;
    const b = object(item, f);
    if (b.type !== "text") throw bad(`${f}.type`, `must be "text" (${MEDIA})`);
    onlyKeys(b, f, ["type", "text", "cache_control", "citations"]);
    mark({ system: k }, f)(b.cache_control);
    return string(b.text, `${f}.text`);
  });
}

const TOOL_FIELDS = [
  "type",
  "name",
  "description",
  "input_schema",
  "cache_control",
  "strict",
  "eager_input_streaming",
];

function toolList(v: unknown, mark: Marker) {
  return array(v ?? [], "tools").map((item, k) => {
    const f = `tools[${k}]`;
    const t = object(item, f);
    if (t.type != null && t.type !== "custom")
      throw bad(
        `${f}.type`,
        `${quoted(String(t.type))} is not supported: ${SERVER_TOOLS}; declare a custom tool`,
      );
    onlyKeys(t, f, TOOL_FIELDS);
    const strict = t.strict !== undefined && boolean(t.strict, `${f}.strict`);
    if (t.input_schema === undefined) throw bad(`${f}.input_schema`, "required");
    const schema = object(t.input_schema, `${f}.input_schema`);
    if (schema.type !== "object") throw bad(`${f}.input_schema.type`, 'must be "object"');
    mark({ tool: k }, f)(t.cache_control);
    const description = t.description === undefined ? "" : string(t.description, `${f}.description`);
    return { name: string(t.name, `${f}.name`), description, schemaJson: JSON.stringify(schema), strict };
  });
}

const TOOL_CHOICE_MODES: Record<string, ToolChoiceMode> = {
  auto: ToolChoiceMode.AUTO,
  any: ToolChoiceMode.REQUIRED,
  none: ToolChoiceMode.NONE,
};

function toolChoiceOf(v: unknown): MessagesRequest["toolChoice"] {
  if (v === undefined) return undefined;
  const c = object(v, "tool_choice");
  onlyKeys(c, "tool_choice", ["type", "name", "disable_parallel_tool_use"]);
  if (c.disable_parallel_tool_use === true)
    throw bad(
      "tool_choice.disable_parallel_tool_use",
      "not supported: kvpark cannot hold the model to one call",
    );
  if (c.type === "tool") return { name: string(c.name, "tool_choice.name") };
  if (typeof c.type !== "string" || !(c.type in TOOL_CHOICE_MODES))
    throw bad("tool_choice.type", 'must be "auto", "any", "tool" or "none"');
  if (c.name !== undefined) throw bad("tool_choice.name", 'set only with type "tool"');
  return { mode: TOOL_CHOICE_MODES[c.type] };
}

function messageList(v: unknown, mark: Marker): MessagesRequest["messages"] {
  const messages = array(v, "messages").map((item, i) => {
    const f = `messages[${i}]`;
    const m = object(item, f);
    onlyKeys(m, f, ["role", "content"]);
    if (m.role !== "user" && m.role !== "assistant") throw bad(`${f}.role`, 'must be "user" or "assistant"');
    const role = m.role as "user" | "assistant";
    if (typeof m.content === "string") return { role, blocks: [{ type: "text", text: m.content } as Block] };
    const blocks = array(m.content, `${f}.content`).map((b, j) =>
      block(b, `${f}.content[${j}]`, role, mark({ message: i, block: j }, `${f}.content[${j}]`)),
    );
    return { role, blocks };
  });
  if (messages.length === 0) throw bad("messages", "must hold at least one message");
  const last = messages.length - 1;
  if (messages[last].role === "assistant")
    throw bad(
      `messages[${last}]`,
      "a final assistant message (prefill) is not supported; end with a user message",
    );
  return messages;
}

/** Checks `thinking`, which is accepted (a reasoning model's thinking comes back as it is) but not used. */
function checkThinking(v: unknown): void {
  if (v === undefined) return;
  const t = object(v, "thinking");
  onlyKeys(t, "thinking", ["type", "budget_tokens", "display"]);
  if (!["enabled", "disabled", "adaptive"].includes(t.type as string))
    throw bad("thinking.type", 'must be "enabled", "adaptive" or "disabled"');
  if (t.budget_tokens !== undefined) number(t.budget_tokens, "thinking.budget_tokens", 1, 2 ** 31, true);
  if (t.display != null && t.display !== "summarized")
    throw bad("thinking.display", "only summarized: kvpark returns the model's thinking as it is");
}

/** The JSON Schema of `output_config.format`, if any (`effort` is accepted and not used). */
function outputSchema(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  const o = object(v, "output_config");
  onlyKeys(o, "output_config", ["effort", "format"]);
  if (o.format == null) return undefined;
  const fmt = object(o.format, "output_config.format");
  onlyKeys(fmt, "output_config.format", ["type", "schema"]);
  if (fmt.type !== "json_schema") throw bad("output_config.format.type", 'must be "json_schema"');
  return JSON.stringify(object(fmt.schema, "output_config.format.schema"));
}

/** Checks a Messages (or count_tokens) request body; `create` requires max_tokens and reads sampling. */
export function parseMessagesRequest(body: Json, config: Config, create: boolean): MessagesRequest {
  onlyKeys(body, "", TOP_LEVEL, TOP_LEVEL_REFUSED);
  const breakpoints: Breakpoint[] = [];
  const mark: Marker = (at, field) => (cc) => {
    const c = cacheControl(cc, `${field}.cache_control`, config);
    if (c) breakpoints.push({ at, pin: c.pin, field });
  };
  if (body.model === undefined) throw bad("model", "required");
  const model = string(body.model, "model");
  const system = systemBlocks(body.system, mark);
  const tools = toolList(body.tools, mark);
  const toolChoice = toolChoiceOf(body.tool_choice);
  const forced =
    toolChoice !== undefined && ("name" in toolChoice || toolChoice.mode === ToolChoiceMode.REQUIRED);
  tools.forEach((t, k) => {
    if (t.strict && !forced)
      throw bad(
        `tools[${k}].strict`,
        'kvpark enforces a tool\'s input_schema only with tool_choice "any" or "tool"',
      );
  });
  const messages = messageList(body.messages, mark);
  checkToolUse(messages, new Set(tools.map((t) => t.name)));
  checkThinking(body.thinking);
  const schemaJson = outputSchema(body.output_config);
  if (body.metadata !== undefined) object(body.metadata, "metadata");
  const whole = cacheControl(body.cache_control, "cache_control", config);
  if (breakpoints.length + (whole ? 1 : 0) > 4)
    throw bad(breakpoints[breakpoints.length - 1].field, "at most 4 blocks may carry cache_control");

  if (create && body.max_tokens === undefined) throw bad("max_tokens", "required");
  const opt = <T>(v: unknown, check: (v: unknown) => T) => (create && v !== undefined ? check(v) : undefined);
  const stops = (v: unknown) => array(v, "stop_sequences").map((s, k) => string(s, `stop_sequences[${k}]`));
  return {
    model,
    system,
    tools,
    toolChoice,
    messages,
    breakpoints,
    wholePromptPin: whole ? { ttlSeconds: whole.ttlSeconds } : undefined,
    maxTokens: opt(body.max_tokens, (v) => number(v, "max_tokens", 1, config.maxTokensLimit, true)),
    temperature: opt(body.temperature, (v) => number(v, "temperature", 0, 1)),
    topP: opt(body.top_p, (v) => number(v, "top_p", Number.MIN_VALUE, 1)),
    topK: opt(body.top_k, (v) => number(v, "top_k", 0, 2 ** 31 - 1, true)),
    stop: opt(body.stop_sequences, stops) ?? [],
    stream: opt(body.stream, (v) => boolean(v, "stream")) ?? false,
    schemaJson,
  };
}

/** Tool uses name declared tools, once per id; tool results answer an earlier tool use, once. */
function checkToolUse(messages: MessagesRequest["messages"], tools: Set<string>): void {
  const ids = new Set<string>();
  const answered = new Set<string>();
  messages.forEach((m, i) =>
    m.blocks.forEach((b, j) => {
      const f = `messages[${i}].content[${j}]`;
      if (b.type === "tool_use") {
        if (!tools.has(b.name)) throw bad(`${f}.name`, `no tool named ${quoted(b.name)} in tools`);
        if (ids.has(b.id)) throw bad(`${f}.id`, `a second tool_use with id ${quoted(b.id)}`);
        ids.add(b.id);
      } else if (b.type === "tool_result") {
        if (!ids.has(b.toolUseId))
          throw bad(`${f}.tool_use_id`, `no earlier tool_use has id ${quoted(b.toolUseId)}`);
        if (answered.has(b.toolUseId))
          throw bad(`${f}.tool_use_id`, `a second tool_result for ${quoted(b.toolUseId)}`);
        answered.add(b.toolUseId);
      }
    }),
  );
}
