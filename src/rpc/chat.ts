// Chat prompts: the checks of a conversation with tools, and its rendering with the model's chat
// template, whole or as the continuation of a conversation whose tokens a handle holds.
import { ToolChoiceMode, type ChatPrompt } from "../../gen/kvpark/v1/common_pb.js";
import { invalidField } from "../errors.js";
import type { ChatMessage, ModelTokenizer } from "../model/tokenizer.js";
import { quoted } from "./quote.js";

/** Limits on what a chat prompt may hold. */
export const CHAT_MESSAGES_MAX = 10000;
export const TOOLS_MAX = 128;
export const TOOL_SCHEMA_BYTES_MAX = 64 * 1024;
const TOOL_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** A tool as the constrained decoder and the output parser see it. */
export interface ToolSpec {
  name: string;
  parametersJson: string;
}

/** What a chat prompt asks of the model's tools. */
export type ToolChoice = "auto" | "none" | "required" | { name: string };

/** A checked chat prompt, in the shapes Hugging Face's chat templates read. */
export interface CheckedChat {
  messages: ChatMessage[];
  /** `[{type: "function", function: {name, description, parameters}}]`, as apply_chat_template(tools=...). */
  tools: object[];
  toolSpecs: ToolSpec[];
  toolChoice: ToolChoice;
  addGenerationPrompt: boolean;
  /** Characters of the request's own text (messages and tools), what rendering and tokenizing cost grows with. */
  chars: number;
}

/** Characters of a chat prompt's text: messages, their tool calls, and the tools. */
function chatChars(chat: ChatPrompt): number {
  let chars = 0;
  for (const m of chat.messages) {
    chars += m.role.length + m.content.length + m.reasoning.length + m.name.length + m.toolCallId.length;
    for (const call of m.toolCalls) chars += call.id.length + call.name.length + call.argumentsJson.length;
  }
  for (const tool of chat.tools)
    chars += tool.name.length + tool.description.length + tool.parametersJson.length;
  return chars;
}

function parseObject(json: string, field: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (err) {
    throw invalidField(field, `not valid JSON (${(err as Error).message.slice(0, 80)})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw invalidField(field, "must be a JSON object");
  return value as Record<string, unknown>;
}

/** Checks a chat prompt's messages, tools and tool choice; errors name the field at fault. */
export function checkChat(chat: ChatPrompt, field: string): CheckedChat {
  const { messages } = chat;
  if (messages.length === 0) throw invalidField(`${field}.messages`, "must hold at least one message");
  if (messages.length > CHAT_MESSAGES_MAX)
    throw invalidField(`${field}.messages`, `more than ${CHAT_MESSAGES_MAX} messages`);
  if (chat.tools.length > TOOLS_MAX) throw invalidField(`${field}.tools`, `at most ${TOOLS_MAX} tools`);
  const names = new Set<string>();
  const tools: object[] = [];
  const toolSpecs: ToolSpec[] = [];
  chat.tools.forEach((tool, i) => {
    const f = `${field}.tools[${i}]`;
    if (!TOOL_NAME.test(tool.name))
      throw invalidField(`${f}.name`, "must be 1 to 64 characters of letters, digits, '_', '-' and '.'");
    if (names.has(tool.name)) throw invalidField(`${f}.name`, `a second tool named ${tool.name}`);
    names.add(tool.name);
    if (tool.parametersJson.length > TOOL_SCHEMA_BYTES_MAX)
      throw invalidField(`${f}.parameters_json`, `longer than ${TOOL_SCHEMA_BYTES_MAX} characters`);
    const parametersJson = tool.parametersJson || '{"type":"object","properties":{}}';
    const parameters = parseObject(parametersJson, `${f}.parameters_json`);
    tools.push({
      type: "function",
      function: { name: tool.name, description: tool.description, parameters },
    });
    toolSpecs.push({ name: tool.name, parametersJson });
  });
  let toolChoice: ToolChoice = "auto";
  const choice = chat.toolChoice?.choice;
  if (choice?.case === "toolName") {
    if (!names.has(choice.value))
      throw invalidField(`${field}.tool_choice.tool_name`, `no tool named ${quoted(choice.value)}`);
    toolChoice = { name: choice.value };
  } else if (choice?.case === "mode") {
    if (choice.value === ToolChoiceMode.NONE) toolChoice = "none";
    else if (choice.value === ToolChoiceMode.REQUIRED) toolChoice = "required";
    else if (choice.value !== ToolChoiceMode.AUTO && choice.value !== ToolChoiceMode.UNSPECIFIED)
      throw invalidField(`${field}.tool_choice.mode`, `unknown mode ${choice.value}`);
  }
  if (toolChoice !== "auto" && toolChoice !== "none" && toolSpecs.length === 0)
    throw invalidField(`${field}.tool_choice`, "requires tools");
  // Calls not yet answered by a tool message, by id.
  const pending = new Map<string, string>();
  const seen = new Set<string>();
  const out = messages.map((m, i): ChatMessage => {
    const f = `${field}.messages[${i}]`;
    if (!m.role) throw invalidField(`${f}.role`, "must not be empty");
    const message: ChatMessage = { role: m.role, content: m.content };
    if (m.toolCalls.length > 0) {
      if (m.role !== "assistant")
        throw invalidField(`${f}.tool_calls`, "only an assistant message calls tools");
      message.tool_calls = m.toolCalls.map((call, j) => {
        const g = `${f}.tool_calls[${j}]`;
        if (!names.has(call.name))
          throw invalidField(`${g}.name`, `no tool named ${quoted(call.name)} in ${field}.tools`);
        if (!call.id) throw invalidField(`${g}.id`, "must not be empty");
        if (seen.has(call.id)) throw invalidField(`${g}.id`, `a second call with id ${quoted(call.id)}`);
        seen.add(call.id);
        pending.set(call.id, call.name);
        const args = parseObject(call.argumentsJson || "{}", `${g}.arguments_json`);
        return { id: call.id, type: "function", function: { name: call.name, arguments: args } };
      });
    }
    if (m.role === "tool") {
      // Without an id, a result answers the oldest call still waiting for one; in a conversation
      // without structured tool calls at all (tool calls written in the text), it stands alone.
      const id = m.toolCallId || pending.keys().next().value;
      if (id === undefined && seen.size > 0)
        throw invalidField(`${f}.tool_call_id`, "no earlier tool call is waiting for a result");
      if (id !== undefined) {
        const name = pending.get(id);
        if (name === undefined)
          throw invalidField(`${f}.tool_call_id`, `no earlier tool call has id ${quoted(id)}`);
        if (m.name && m.name !== name)
          throw invalidField(`${f}.name`, `the call ${quoted(id)} was to ${name}, not ${quoted(m.name)}`);
        pending.delete(id);
        message.tool_call_id = id;
        message.name = name;
      } else if (m.name) message.name = m.name;
    } else if (m.toolCallId) throw invalidField(`${f}.tool_call_id`, "set only in a tool message");
    if (m.reasoning) {
      if (m.role !== "assistant") throw invalidField(`${f}.reasoning`, "only an assistant message reasons");
      message.reasoning_content = m.reasoning;
    }
    return message;
  });
  return {
    messages: out,
    tools,
    toolSpecs,
    toolChoice,
    addGenerationPrompt: chat.addGenerationPrompt ?? true,
    chars: chatChars(chat),
  };
}

// A conversation the continuation is rendered after; its text is cut off again.
const PLACEHOLDER: ChatMessage[] = [{ role: "user", content: "\u2063" }];

/**
 * Renders a checked chat with the model's template. With `continuation`, the messages continue a
 * conversation (a PrefillStream handle's context): only what the template writes for them is
 * rendered, without the opening a new conversation gets (BOS, default system prompt).
 */
export function renderChat(
  chat: CheckedChat,
  tokenizer: ModelTokenizer,
  field: string,
  continuation = false,
): { prompt: string; ids: number[] } {
  const options = { addGenerationPrompt: chat.addGenerationPrompt, tools: chat.tools };
  const guard = <T>(render: () => T): T => {
    try {
      return render();
    } catch (err) {
      throw invalidField(field, `the model's chat template failed: ${(err as Error).message}`);
    }
  };
  if (!continuation) return guard(() => tokenizer.renderAndEncode(chat.messages, options));
  const before = guard(() =>
    tokenizer.applyChatTemplate(PLACEHOLDER, { ...options, addGenerationPrompt: false }),
  );
  const whole = guard(() => tokenizer.applyChatTemplate([...PLACEHOLDER, ...chat.messages], options));
  if (!whole.startsWith(before))
    throw invalidField(field, "the model's chat template cannot continue a conversation; send it whole");
  const prompt = whole.slice(before.length);
  return { prompt, ids: tokenizer.encode(prompt, { addSpecialTokens: false }) };
}
