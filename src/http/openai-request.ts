// OpenAI request bodies (chat completions, completions) as kvpark GenerateRequests: every field either
// carried over, accepted because it does not change what is generated, or refused with a 400 naming it.
// What the fields' values may be is left to Generate's own checks, so both APIs check alike.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ToolChoiceMode,
  type ChatMessageSchema,
  type PromptSchema,
  type ToolChoiceSchema,
  type ToolSchema,
} from "../../gen/kvpark/v1/common_pb.js";
import {
  GenerateRequestSchema,
  type GenerateRequest,
  type ResponseFormatSchema,
} from "../../gen/kvpark/v1/inference_pb.js";
import { quoted } from "../rpc/quote.js";
import {
  badField,
  chatFieldNames,
  textFieldNames,
  unknownField,
  unsupported,
  type FieldNames,
} from "./openai-errors.js";

type Body = Record<string, unknown>;
type Sampling = {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: bigint;
  stop?: string[];
  responseFormat?: MessageInitShape<typeof ResponseFormatSchema>;
};
type Message = MessageInitShape<typeof ChatMessageSchema>;

/** A request body as a Generate request, with how it is answered. */
export interface ParsedRequest {
  request: GenerateRequest;
  stream: boolean;
  /** stream_options.include_usage: a last chunk with the usage. */
  includeUsage: boolean;
  /** kvpark's field names in this request's terms, for errors. */
  names: FieldNames;
}

const isObject = (v: unknown): v is Body => typeof v === "object" && v !== null && !Array.isArray(v);
/** JSON null is taken as the field's absence, as OpenAI takes it. */
const present = (v: unknown): boolean => v !== undefined && v !== null;

/** Fields that do not change what is generated: accepted, and ignored. */
const IGNORED = ["user", "metadata", "store", "parallel_tool_calls", "service_tier", "prompt_cache_key"];
const IGNORED_ALSO = ["safety_identifier"];

type Rule = { neutral: (v: unknown) => boolean; why: string };
const never = () => false;
const NO_PENALTIES = "repetition penalties are not implemented; send 0 or leave it out";

/** Fields refused unless they hold the value that changes nothing, with why. */
const CHAT_RULES: Record<string, Rule> = {
  n: {
    neutral: (v) => v === 1,
    why: "one choice per request; send n requests instead (their shared prompt is computed once and cached)",
  },
  frequency_penalty: { neutral: (v) => v === 0, why: NO_PENALTIES },
  presence_penalty: { neutral: (v) => v === 0, why: NO_PENALTIES },
  logit_bias: {
    neutral: (v) => isObject(v) && Object.keys(v).length === 0,
    why: "logit biases are not implemented",
  },
  logprobs: { neutral: (v) => v === false, why: "log probabilities are not returned" },
  top_logprobs: { neutral: (v) => v === 0, why: "log probabilities are not returned" },
  functions: { neutral: never, why: "the deprecated functions API is not supported; send tools" },
  function_call: { neutral: never, why: "the deprecated functions API is not supported; send tool_choice" },
  modalities: {
    neutral: (v) => Array.isArray(v) && v.every((m) => m === "text"),
    why: "the served model writes text only",
  },
  audio: { neutral: never, why: "the served model writes text only" },
  prediction: { neutral: never, why: "predicted outputs are not supported" },
  reasoning_effort: { neutral: never, why: "the served model's reasoning cannot be tuned" },
  verbosity: { neutral: never, why: "the served model's verbosity cannot be tuned" },
  web_search_options: { neutral: never, why: "web search is not supported" },
};

const TEXT_RULES: Record<string, Rule> = {
  n: CHAT_RULES.n,
  frequency_penalty: CHAT_RULES.frequency_penalty,
  presence_penalty: CHAT_RULES.presence_penalty,
  logit_bias: CHAT_RULES.logit_bias,
  logprobs: { neutral: never, why: "log probabilities are not returned" },
  best_of: { neutral: (v) => v === 1, why: "one candidate per request; send best_of requests and rank them" },
  echo: { neutral: (v) => v === false, why: "the prompt is not echoed; the client has it" },
  suffix: { neutral: (v) => v === "", why: "insertion (fill-in-the-middle) is not supported" },
};

const SAMPLING_FIELDS = ["model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop"];
const STREAM_FIELDS = ["stream", "stream_options"];
const CHAT_FIELDS = new Set([
  ...SAMPLING_FIELDS,
  ...STREAM_FIELDS,
  ...IGNORED,
  ...IGNORED_ALSO,
  "messages",
  "tools",
  "tool_choice",
  "response_format",
  "max_completion_tokens",
]);
const TEXT_FIELDS = new Set([...SAMPLING_FIELDS, ...STREAM_FIELDS, ...IGNORED, ...IGNORED_ALSO, "prompt"]);

/** Refuses unknown fields and fields whose value would change the output. */
function checkFields(body: Body, known: Set<string>, rules: Record<string, Rule>): void {
  for (const [key, value] of Object.entries(body)) {
    const rule = Object.hasOwn(rules, key) ? rules[key] : undefined;
    if (rule) {
      if (present(value) && !rule.neutral(value)) throw unsupported(key, rule.why);
    } else if (!known.has(key)) throw unknownField(key);
  }
}

function string(v: unknown, param: string): string | undefined {
  if (!present(v)) return undefined;
  if (typeof v !== "string") throw badField(param, "must be a string");
  return v;
}

function number(v: unknown, param: string): number | undefined {
  if (!present(v)) return undefined;
  if (typeof v !== "number") throw badField(param, "must be a number");
  return v;
}

function integer(v: unknown, param: string): number | undefined {
  const n = number(v, param);
  if (n !== undefined && !Number.isSafeInteger(n)) throw badField(param, `must be an integer, got ${n}`);
  return n;
}

function boolean(v: unknown, param: string): boolean | undefined {
  if (!present(v)) return undefined;
  if (typeof v !== "boolean") throw badField(param, "must be true or false");
  return v;
}

/** The sampling fields both endpoints share; kvpark checks their ranges. */
function sampling(body: Body): { sampling: Sampling; maxTokensField: string } {
  const out: Sampling = {};
  const both = present(body.max_tokens) && present(body.max_completion_tokens);
  if (both && body.max_tokens !== body.max_completion_tokens)
    throw badField("max_tokens", "differs from max_completion_tokens; send one of them");
  const maxTokensField = present(body.max_completion_tokens) ? "max_completion_tokens" : "max_tokens";
  const maxTokens = integer(body[maxTokensField], maxTokensField);
  // Beyond int32, the value is still refused by kvpark's range check, with the limit.
  if (maxTokens !== undefined) out.maxTokens = Math.max(-1, Math.min(maxTokens, 2 ** 31 - 1));
  const temperature = number(body.temperature, "temperature");
  if (temperature !== undefined) out.temperature = temperature;
  const topP = number(body.top_p, "top_p");
  if (topP !== undefined) out.topP = topP;
  const topK = integer(body.top_k, "top_k");
  // -1 is vLLM's "no top-k"; kvpark's is 0.
  if (topK !== undefined) out.topK = topK === -1 ? 0 : Math.max(-1, Math.min(topK, 2 ** 31 - 1));
  const seed = integer(body.seed, "seed");
  // OpenAI's seeds are signed 64-bit; kvpark's unsigned: a negative seed is taken modulo 2^64.
  if (seed !== undefined) out.seed = BigInt.asUintN(64, BigInt(seed));
  const stop = body.stop;
  if (typeof stop === "string") out.stop = [stop];
  else if (Array.isArray(stop)) out.stop = stop.map((s, i) => string(s, `stop[${i}]`) ?? "");
  else if (present(stop)) throw badField("stop", "must be a string or a list of strings");
  return { sampling: out, maxTokensField };
}

function streaming(body: Body): { stream: boolean; includeUsage: boolean } {
  const stream = boolean(body.stream, "stream") ?? false;
  const options = body.stream_options;
  if (present(options) && !isObject(options)) throw badField("stream_options", "must be an object");
  const includeUsage = isObject(options)
    ? (boolean(options.include_usage, "stream_options.include_usage") ?? false)
    : false;
  return { stream, includeUsage: stream && includeUsage };
}

// Content parts of media the served model cannot read.
const MEDIA_PARTS = new Set([
  "image_url",
  "input_image",
  "image",
  "input_audio",
  "audio",
  "file",
  "video_url",
]);

/** A message's content: a string, or text parts (joined with newlines, as vLLM joins them). */
function content(v: unknown, param: string, nullable: boolean): string {
  if (typeof v === "string") return v;
  if (!present(v)) {
    if (nullable) return "";
    throw badField(param, "required: a string or a list of text parts");
  }
  if (!Array.isArray(v)) throw badField(param, "must be a string or a list of text parts");
  return v
    .map((part, j) => {
      const p = `${param}[${j}]`;
      if (!isObject(part)) throw badField(p, "must be a content part such as {type: text, text}");
      const type = part.type;
      if (type === "text") return string(part.text, `${p}.text`) ?? "";
      if (typeof type === "string" && MEDIA_PARTS.has(type))
        throw unsupported(`${p}.type`, `${type} parts are not supported: the served model reads text only`);
      throw badField(`${p}.type`, `unknown content part type ${quoted(String(type))}; send text parts`);
    })
    .join("\n");
}

// Fields of each role's messages; cache_control (a prompt-caching hint some clients add) is ignored:
// kvpark caches every prompt.
const MESSAGE_FIELDS: Record<string, string[]> = {
  system: ["content", "name", "cache_control"],
  developer: ["content", "name", "cache_control"],
  user: ["content", "name", "cache_control"],
  assistant: [
    "content",
    "name",
    "tool_calls",
    "reasoning_content",
    "refusal",
    "audio",
    "function_call",
    "cache_control",
  ],
  tool: ["content", "tool_call_id", "name", "cache_control"],
};

function toolCalls(v: unknown, param: string): Message["toolCalls"] {
  if (!present(v)) return [];
  if (!Array.isArray(v)) throw badField(param, "must be a list of tool calls");
  return v.map((call, j) => {
    const p = `${param}[${j}]`;
    if (!isObject(call)) throw badField(p, "must be {id, type: function, function: {name, arguments}}");
    if (present(call.type) && call.type !== "function")
      throw unsupported(`${p}.type`, `only function calls are supported, not ${quoted(String(call.type))}`);
    const fn = call.function;
    if (!isObject(fn)) throw badField(`${p}.function`, "required: {name, arguments}");
    const args = fn.arguments;
    // Arguments are JSON text; an object sent as such is taken too.
    const argumentsJson = isObject(args)
      ? JSON.stringify(args)
      : (string(args, `${p}.function.arguments`) ?? "");
    return {
      id: string(call.id, `${p}.id`) ?? "",
      name: string(fn.name, `${p}.function.name`) ?? "",
      argumentsJson,
    };
  });
}

function message(m: unknown, param: string): Message {
  if (!isObject(m)) throw badField(param, "must be a message object with a role");
  const role = m.role;
  if (role === "function")
    throw unsupported(`${param}.role`, "the deprecated functions API is not supported; send tool messages");
  const fields =
    typeof role === "string" && Object.hasOwn(MESSAGE_FIELDS, role) ? MESSAGE_FIELDS[role] : undefined;
  if (!fields) {
    const got = typeof role === "string" ? ` ${quoted(role)}` : "";
    throw badField(`${param}.role`, `unknown role${got}: system, developer, user, assistant or tool`);
  }
  for (const key of Object.keys(m))
    if (key !== "role" && !fields.includes(key)) throw unknownField(`${param}.${key}`);
  if (role !== "tool" && present(m.name))
    throw unsupported(
      `${param}.name`,
      "participant names are not supported (the chat template has no place for them)",
    );
  if (present(m.audio)) throw unsupported(`${param}.audio`, "the served model reads text only");
  if (present(m.function_call)) throw unsupported(`${param}.function_call`, "send tool_calls");
  if (present(m.refusal)) throw unsupported(`${param}.refusal`, "send the refusal as content");
  const out: Message = {
    // Chat templates know "system"; OpenAI's "developer" is its newer name.
    role: role === "developer" ? "system" : (role as string),
    content: content(m.content, `${param}.content`, role === "assistant"),
    toolCalls: toolCalls(m.tool_calls, `${param}.tool_calls`),
  };
  if (role === "tool") {
    out.toolCallId = string(m.tool_call_id, `${param}.tool_call_id`) ?? "";
    out.name = string(m.name, `${param}.name`) ?? "";
  }
  const reasoning = string(m.reasoning_content, `${param}.reasoning_content`);
  if (reasoning) out.reasoning = reasoning;
  return out;
}

function tools(v: unknown): MessageInitShape<typeof ToolSchema>[] {
  if (!present(v)) return [];
  if (!Array.isArray(v)) throw badField("tools", "must be a list of tools");
  return v.map((tool, i) => {
    const p = `tools[${i}]`;
    if (!isObject(tool))
      throw badField(p, "must be {type: function, function: {name, description, parameters}}");
    if (tool.type !== "function")
      throw unsupported(`${p}.type`, `only function tools are supported, not ${quoted(String(tool.type))}`);
    for (const key of Object.keys(tool))
      if (key !== "type" && key !== "function") throw unknownField(`${p}.${key}`);
    const fn = tool.function;
    if (!isObject(fn)) throw badField(`${p}.function`, "required: {name, description, parameters}");
    for (const key of Object.keys(fn))
      if (!["name", "description", "parameters", "strict"].includes(key))
        throw unknownField(`${p}.function.${key}`);
    // strict is accepted: a required or named call is always held to the schema, an auto one never.
    boolean(fn.strict, `${p}.function.strict`);
    const parameters = fn.parameters;
    if (present(parameters) && !isObject(parameters))
      throw badField(`${p}.function.parameters`, "must be a JSON Schema object");
    return {
      name: string(fn.name, `${p}.function.name`) ?? "",
      description: string(fn.description, `${p}.function.description`) ?? "",
      parametersJson: present(parameters) ? JSON.stringify(parameters) : "",
    };
  });
}

function toolChoice(v: unknown): MessageInitShape<typeof ToolChoiceSchema> | undefined {
  if (!present(v)) return undefined;
  const modes: Record<string, ToolChoiceMode> = {
    auto: ToolChoiceMode.AUTO,
    none: ToolChoiceMode.NONE,
    required: ToolChoiceMode.REQUIRED,
  };
  if (typeof v === "string" && Object.hasOwn(modes, v)) return { choice: { case: "mode", value: modes[v] } };
  if (isObject(v) && v.type === "function" && isObject(v.function)) {
    const name = string(v.function.name, "tool_choice.function.name") ?? "";
    return { choice: { case: "toolName", value: name } };
  }
  if (isObject(v) && v.type === "allowed_tools")
    throw unsupported("tool_choice", "allowed_tools is not supported; send only the tools allowed");
  throw badField("tool_choice", 'must be "auto", "none", "required" or {type: function, function: {name}}');
}

function responseFormat(v: unknown): MessageInitShape<typeof ResponseFormatSchema> | undefined {
  if (!present(v)) return undefined;
  if (!isObject(v)) throw badField("response_format", "must be {type: text, json_object or json_schema}");
  switch (v.type) {
    case "text":
      return { format: { case: "text", value: {} } };
    case "json_object":
      return { format: { case: "jsonObject", value: {} } };
    case "json_schema": {
      const spec = v.json_schema;
      if (!isObject(spec)) throw badField("response_format.json_schema", "required: {name, schema, strict}");
      const name = string(spec.name, "response_format.json_schema.name") ?? "";
      string(spec.description, "response_format.json_schema.description");
      const strict = boolean(spec.strict, "response_format.json_schema.strict") ?? false;
      const schemaJson = present(spec.schema) ? JSON.stringify(spec.schema) : "";
      return { format: { case: "jsonSchema", value: { name, schemaJson, strict } } };
    }
    default:
      throw badField("response_format.type", "must be text, json_object or json_schema");
  }
}

/** A POST /v1/chat/completions body as a Generate request. */
export function chatRequest(body: Body): ParsedRequest {
  checkFields(body, CHAT_FIELDS, CHAT_RULES);
  if (!Array.isArray(body.messages)) throw badField("messages", "required: a list of messages");
  const messages = body.messages.map((m, i) => message(m, `messages[${i}]`));
  const { sampling: params, maxTokensField } = sampling(body);
  const format = responseFormat(body.response_format);
  const request = create(GenerateRequestSchema, {
    prompt: {
      kind: {
        case: "chat",
        value: { messages, tools: tools(body.tools), toolChoice: toolChoice(body.tool_choice) },
      },
    },
    sampling: { ...params, ...(format && { responseFormat: format }) },
  });
  return { request, ...streaming(body), names: chatFieldNames(maxTokensField) };
}

/** A prompt of POST /v1/completions: text or token ids, alone or as a batch of one. */
function textPrompt(v: unknown): MessageInitShape<typeof PromptSchema> {
  const one = Array.isArray(v) && v.length === 1 && (typeof v[0] === "string" || Array.isArray(v[0]));
  const prompt = one ? (v as unknown[])[0] : v;
  if (typeof prompt === "string") return { kind: { case: "text", value: prompt } };
  if (Array.isArray(prompt) && prompt.length > 0 && prompt.every((id) => typeof id === "number")) {
    const bad = prompt.findIndex((id) => !Number.isInteger(id) || id < 0 || id > 0xffffffff);
    if (bad >= 0)
      throw badField(`prompt[${bad}]`, `must be a token id (an integer from 0), got ${prompt[bad]}`);
    return { kind: { case: "tokens", value: { ids: prompt } } };
  }
  if (
    Array.isArray(prompt) &&
    prompt.length > 1 &&
    prompt.every((p) => typeof p === "string" || Array.isArray(p))
  )
    throw unsupported("prompt", "one prompt per request; send a batch as separate requests");
  throw badField("prompt", "required: a string or a list of token ids");
}

/** A POST /v1/completions body as a Generate request. */
export function textRequest(body: Body): ParsedRequest {
  checkFields(body, TEXT_FIELDS, TEXT_RULES);
  const { sampling: params, maxTokensField } = sampling(body);
  const request = create(GenerateRequestSchema, { prompt: textPrompt(body.prompt), sampling: params });
  return { request, ...streaming(body), names: textFieldNames(maxTokensField) };
}
