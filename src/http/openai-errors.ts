// The errors of the OpenAI-compatible API: OpenAI's error object and status codes, for refusals of
// its own and for whatever a generation throws (kvpark's field names translated to OpenAI's).
import { Code } from "@connectrpc/connect";
import { toConnectError } from "../rpc/call-end.js";
import { clientField } from "../rpc/quote.js";
import { HttpError } from "./api.js";

/** OpenAI's error object, the body of every error response (`{"error": ...}`). */
export interface OpenAiErrorBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}

/** A refusal in OpenAI's terms: status, type, and the request field at fault. */
export class OpenAiError extends HttpError {
  constructor(
    status: number,
    message: string,
    type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(status, message, type);
    this.name = "OpenAiError";
  }
}

/** 400 for a field whose value is wrong: `param: problem`. */
export function badField(param: string, problem: string, code: string | null = null): OpenAiError {
  return new OpenAiError(400, `${param}: ${problem}`, "invalid_request_error", param, code);
}

/** 400 for a field kvpark knows but cannot honour with the value sent. */
export function unsupported(param: string, why: string): OpenAiError {
  return badField(param, why, "unsupported_parameter");
}

/** 400 for a field kvpark does not know, in OpenAI's words. */
export function unknownField(param: string): OpenAiError {
  const name = clientField(param);
  return new OpenAiError(
    400,
    `Unrecognized request argument supplied: ${name}`,
    "invalid_request_error",
    name,
    "unknown_parameter",
  );
}

/** How kvpark names the fields of a request it built, in the request the client sent. */
export type FieldNames = [RegExp, string][];

/** kvpark's names of a chat request's fields, as Generate's validation reports them. */
export function chatFieldNames(maxTokensField: string): FieldNames {
  return [
    [
      /\bprompt\.chat\.messages\[(\d+)\]\.tool_calls\[(\d+)\]\.name\b/g,
      "messages[$1].tool_calls[$2].function.name",
    ],
    [
      /\bprompt\.chat\.messages\[(\d+)\]\.tool_calls\[(\d+)\]\.arguments_json\b/g,
      "messages[$1].tool_calls[$2].function.arguments",
    ],
    [/\bprompt\.chat\.messages\[(\d+)\]\.reasoning\b/g, "messages[$1].reasoning_content"],
    [/\bprompt\.chat\.tools\[(\d+)\]\.name\b/g, "tools[$1].function.name"],
    [/\bprompt\.chat\.tools\[(\d+)\]\.parameters_json\b/g, "tools[$1].function.parameters"],
    [/\bprompt\.chat\.tool_choice\.tool_name\b/g, "tool_choice.function.name"],
    [/\bprompt\.chat\.tool_choice\.mode\b/g, "tool_choice"],
    [/\bprompt\.chat\.(?=\w)/g, ""],
    [/\bprompt\.chat\b/g, "messages"],
    [/^prompt(?=:)/, "messages"],
    ...samplingFieldNames(maxTokensField),
  ];
}

/** kvpark's names of a text completion request's fields. */
export function textFieldNames(maxTokensField: string): FieldNames {
  return [
    [/\bprompt\.tokens\.ids\b/g, "prompt"],
    [/\bprompt\.text\b/g, "prompt"],
    ...samplingFieldNames(maxTokensField),
  ];
}

function samplingFieldNames(maxTokensField: string): FieldNames {
  return [
    [/\bsampling\.response_format\.json_schema\.schema_json\b/g, "response_format.json_schema.schema"],
    [/\bsampling\.max_tokens\b/g, maxTokensField],
    [/\bsampling\.(?=\w)/g, ""],
  ];
}

// OpenAI's status, error type and code for each status of a failed generation.
const BY_CODE: Partial<Record<Code, [number, string, string | null]>> = {
  [Code.InvalidArgument]: [400, "invalid_request_error", null],
  [Code.OutOfRange]: [400, "invalid_request_error", "context_length_exceeded"],
  [Code.FailedPrecondition]: [400, "invalid_request_error", null],
  [Code.Unimplemented]: [400, "invalid_request_error", null],
  [Code.NotFound]: [404, "invalid_request_error", "not_found"],
  [Code.Unauthenticated]: [401, "invalid_request_error", "invalid_api_key"],
  [Code.PermissionDenied]: [403, "invalid_request_error", null],
  [Code.ResourceExhausted]: [429, "rate_limit_error", "server_busy"],
  [Code.Unavailable]: [503, "server_error", "engine_unavailable"],
  [Code.DeadlineExceeded]: [504, "server_error", "timeout"],
};

/** An error as the client gets it; `internal` is set for 500s, whose cause only the log may see. */
export interface RenderedError {
  status: number;
  body: { error: OpenAiErrorBody };
  headers: Record<string, string>;
  internal?: unknown;
}

// A message that starts with a field name (kvpark's messages do: "field: problem").
const LEADING_FIELD = /^([A-Za-z_][\w.[\]]*): /;

/** Any error in OpenAI's shape, kvpark's field names translated by `names`. */
export function renderError(err: unknown, names: FieldNames = []): RenderedError {
  if (err instanceof OpenAiError) {
    const body = { message: err.message, type: err.type!, param: err.param, code: err.code };
    return { status: err.status, body: { error: body }, headers: {} };
  }
  if (err instanceof HttpError) {
    const code = err.status === 413 ? "request_too_large" : null;
    const body = { message: err.message, type: "invalid_request_error", param: null, code };
    return { status: err.status, body: { error: body }, headers: {} };
  }
  const ce = toConnectError(err);
  const known = BY_CODE[ce.code];
  if (!known) {
    const body = { message: ce.rawMessage, type: "server_error", param: null, code: null };
    return { status: 500, body: { error: body }, headers: {}, internal: err };
  }
  const [status, type, code] = known;
  const message = names.reduce((m, [from, to]) => m.replace(from, to), ce.rawMessage);
  const param = status === 400 ? (LEADING_FIELD.exec(message)?.[1] ?? null) : null;
  const headers: Record<string, string> = status === 429 || status === 503 ? { "retry-after": "1" } : {};
  return { status, body: { error: { message, type, param, code } }, headers };
}
