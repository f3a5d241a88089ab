// The kvpark prompt of an Anthropic Messages request: its conversation as a chat prompt (whole, or
// cut after a cache_control breakpoint), the GenerateRequest it runs as, the prefixes its breakpoints
// pin, and kvpark's field names in errors translated back to the request's.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  PinKind,
  PromptSchema,
  type ChatMessageSchema,
  type ChatPromptSchema,
} from "../../gen/kvpark/v1/common_pb.js";
import { GenerateRequestSchema, type GenerateRequest } from "../../gen/kvpark/v1/inference_pb.js";
import type { ModelInfo, PinHint } from "../engine-ipc.js";
import type { PromptEncoder } from "../rpc/deps.js";
import { promptInput } from "../rpc/validation.js";
import type { Cut, MessagesRequest } from "./anthropic-request.js";

type Init = MessageInitShape<typeof ChatPromptSchema>;

/** A kvpark chat prompt, as `create(ChatPromptSchema, ...)` takes it. */
export interface ChatPromptInit {
  messages: MessageInitShape<typeof ChatMessageSchema>[];
  tools: NonNullable<Init["tools"]>;
  toolChoice?: Init["toolChoice"];
  addGenerationPrompt: boolean;
}

/**
 * The request's conversation as a kvpark chat prompt, whole or cut after a breakpoint's block (for
 * the prefix a breakpoint pins: no generation prompt, no tool choice). `paths[k]` is where kvpark's
 * message k came from in the request, for error messages.
 */
export function chatPrompt(r: MessagesRequest, cut?: Cut): { chat: ChatPromptInit; paths: string[] } {
  const system = cut && "system" in cut ? r.system.slice(0, cut.system + 1) : r.system;
  const tools = cut && "tool" in cut ? r.tools.slice(0, cut.tool + 1) : r.tools;
  const last = !cut ? r.messages.length - 1 : "message" in cut ? cut.message : -1;
  const messages: ChatPromptInit["messages"] = [];
  const paths: string[] = [];
  if (system.length > 0) {
    messages.push({ role: "system", content: system.join("\n") });
    paths.push("system");
  }
  for (let i = 0; i <= last; i++) {
    const m = r.messages[i];
    const blocks = cut && "message" in cut && i === cut.message ? m.blocks.slice(0, cut.block + 1) : m.blocks;
    const texts = blocks.filter((b) => b.type === "text").map((b) => b.text);
    if (m.role === "assistant") {
      messages.push({
        role: "assistant",
        content: texts.join("\n"),
        reasoning: blocks.flatMap((b) => (b.type === "thinking" ? [b.thinking] : [])).join("\n"),
        toolCalls: blocks.flatMap((b) =>
          b.type === "tool_use" ? [{ id: b.id, name: b.name, argumentsJson: JSON.stringify(b.input) }] : [],
        ),
      });
      paths.push(`messages[${i}]`);
      continue;
    }
    // A user message: its tool results become tool messages, the text between them user messages.
    let text: string[] = [];
    const flush = () => {
      if (text.length > 0) messages.push({ role: "user", content: text.join("\n") });
      if (text.length > 0) paths.push(`messages[${i}]`);
      text = [];
    };
    blocks.forEach((b, j) => {
      if (b.type === "text") text.push(b.text);
      else if (b.type === "tool_result") {
        flush();
        messages.push({
          role: "tool",
          content: b.isError ? `Error: ${b.content}` : b.content,
          toolCallId: b.toolUseId,
        });
        paths.push(`messages[${i}].content[${j}]`);
      }
    });
    flush();
  }
  let toolChoice: ChatPromptInit["toolChoice"];
  if (!cut && r.toolChoice)
    toolChoice = {
      choice:
        "name" in r.toolChoice
          ? { case: "toolName", value: r.toolChoice.name }
          : { case: "mode", value: r.toolChoice.mode },
    };
  const chat: ChatPromptInit = {
    messages,
    tools: tools.map((t) => ({ name: t.name, description: t.description, parametersJson: t.schemaJson })),
    toolChoice,
    addGenerationPrompt: !cut,
  };
  return { chat, paths };
}

/** The kvpark Generate request of a checked Messages request. */
export function generateRequest(r: MessagesRequest, chat: ChatPromptInit): GenerateRequest {
  return create(GenerateRequestSchema, {
    model: r.model,
    prompt: { kind: { case: "chat", value: chat } },
    sampling: {
      maxTokens: r.maxTokens,
      temperature: r.temperature,
      topP: r.topP,
      topK: r.topK,
      stop: r.stop,
      responseFormat: r.schemaJson
        ? { format: { case: "jsonSchema", value: { schemaJson: r.schemaJson, strict: true } } }
        : undefined,
    },
    cache: r.wholePromptPin ? { pin: PinKind.SOFT, pinTtlSeconds: r.wholePromptPin.ttlSeconds } : undefined,
  });
}

// kvpark's field names in its errors, and the request fields they come from.
const FIELD_NAMES: [RegExp, string][] = [
  [/\bprompt\.chat\.tools\[(\d+)\]\.parameters_json\b/g, "tools[$1].input_schema"],
  [/\bprompt\.chat\.tool_choice\.tool_name\b/g, "tool_choice.name"],
  [/\bprompt\.chat\.(tools|tool_choice)\b/g, "$1"],
  [/\bprompt\.chat\b|\bprompt\b(?=:)/g, "messages"],
  [/\bsampling\.response_format\.json_schema\.schema_json\b/g, "output_config.format.schema"],
  [/\bsampling\.response_format\b/g, "output_config.format"],
  [/\bsampling\.stop\b/g, "stop_sequences"],
  [/\bsampling\.(max_tokens|temperature|top_p|top_k)\b/g, "$1"],
  [/\bcache\.pin_ttl_seconds\b/g, "cache_control.ttl"],
  // Anthropic's structured outputs are always strict.
  [/ or set strict to false\b/g, ""],
];

/** A kvpark error message with the request's field names instead of kvpark's. */
export function anthropicFields(message: string, paths: readonly string[]): string {
  let out = message.replace(
    /\bprompt\.chat\.messages\[(\d+)\]/g,
    (all, k: string) => paths[Number(k)] ?? all,
  );
  for (const [re, to] of FIELD_NAMES) out = out.replace(re, to);
  return out;
}

/** The prompt's token ids, exactly as Generate computes them. */
export async function promptIds(
  chat: ChatPromptInit,
  encoder: PromptEncoder,
  info: ModelInfo,
): Promise<number[]> {
  const prompt = create(PromptSchema, { kind: { case: "chat", value: chat } });
  return (await promptInput(prompt, "prompt", encoder, info)).ids;
}

/**
 * How many leading tokens of the prompt (`ids`) a breakpoint covers: the conversation cut after the
 * breakpoint's block is rendered with the chat template (no generation prompt) and tokenized, and the
 * tokens it shares with the whole prompt from the start are the prefix. A template that refuses the
 * cut conversation (one that must end with a user turn, say) gets a one-character user message after
 * it; one that refuses that too gets no pin.
 */
async function cutTokens(
  r: MessagesRequest,
  cut: Cut,
  ids: number[],
  encoder: PromptEncoder,
  info: ModelInfo,
): Promise<number> {
  const { chat } = chatPrompt(r, cut);
  const padded: ChatPromptInit = {
    ...chat,
    messages: [...chat.messages, { role: "user", content: "\u2063" }],
  };
  for (const attempt of chat.messages.length > 0 ? [chat, padded] : [padded]) {
    let cutIds: number[];
    try {
      cutIds = await promptIds(attempt, encoder, info);
    } catch {
      continue;
    }
    let n = 0;
    while (n < ids.length && n < cutIds.length && ids[n] === cutIds[n]) n++;
    return n;
  }
  return 0;
}

/** The prefixes the request's breakpoints pin, as token ids, each with its pin. */
export async function breakpointPrefixes(
  r: MessagesRequest,
  chat: ChatPromptInit,
  encoder: PromptEncoder,
  info: ModelInfo,
): Promise<{ tokens: number[]; pin: PinHint }[]> {
  if (r.breakpoints.length === 0) return [];
  const ids = await promptIds(chat, encoder, info);
  const prefixes: { tokens: number[]; pin: PinHint }[] = [];
  for (const bp of r.breakpoints) {
    const n = await cutTokens(r, bp.at, ids, encoder, info);
    if (n > 0) prefixes.push({ tokens: ids.slice(0, n), pin: bp.pin });
  }
  return prefixes;
}
