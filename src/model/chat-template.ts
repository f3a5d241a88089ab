/**
 * What a compiled chat template reads: whether it takes tools, and which message field it reads an
 * assistant's reasoning from.
 */
import type { Template } from "@huggingface/jinja";

/**
 * One chat turn in the shape transformers' apply_chat_template hands templates: `role`, `content`
 * and, when set, `tool_calls` (`[{id, type: "function", function: {name, arguments: <object>}}]`),
 * `tool_call_id`, `name` and `reasoning_content`. Fields are passed to the template as they are;
 * leave a field out rather than setting it empty, since templates test for presence
 * (`'tool_calls' in message`, `message.tool_calls is defined`).
 */
export interface ChatMessage {
  role: string;
  content: string;
  [field: string]: unknown;
}

/** Message fields templates read an assistant's reasoning from; transformers' convention first. */
const REASONING_FIELDS = ["reasoning_content", "reasoning", "thinking"] as const;

/** Every identifier, attribute and subscript name a compiled template mentions. */
export function templateNames(template: Template): Set<string> {
  const names = new Set<string>();
  const stack: unknown[] = [template.parsed];
  while (stack.length > 0) {
    const node = stack.pop();
    if (node instanceof Map) {
      for (const [key, value] of node) stack.push(key, value);
    } else if (Array.isArray(node)) {
      stack.push(...node);
    } else if (typeof node === "object" && node !== null) {
      const n = node as { type?: unknown; value?: unknown; property?: { type?: unknown; value?: unknown } };
      if (n.type === "Identifier" && typeof n.value === "string") names.add(n.value);
      // message['reasoning_content'] names the field with a string.
      if (n.type === "MemberExpression" && n.property?.type === "StringLiteral") {
        names.add(String(n.property.value));
      }
      for (const value of Object.values(node)) if (typeof value === "object") stack.push(value);
    }
  }
  return names;
}

/** What a compiled chat template reads, found once when it is compiled. */
export interface TemplateFacts {
  /** The template reads the `tools` variable; tools given to one that does not would be dropped. */
  usesTools: boolean;
  /** The reasoning fields (of REASONING_FIELDS) it reads; empty when it reads none. */
  reasoningFields: string[];
}

/** Looks at what a compiled template reads. */
export function templateFacts(template: Template): TemplateFacts {
  const names = templateNames(template);
  return {
    usesTools: names.has("tools"),
    reasoningFields: REASONING_FIELDS.filter((field) => names.has(field)),
  };
}

/**
 * Puts each message's reasoning (given as `reasoning_content`, as transformers and vLLM name it) also
 * under the other names the template reads it from (`reasoning`, `thinking`), so it lands where the
 * template expects it. Messages without reasoning are passed on as they are.
 */
export function placeReasoning(
  messages: readonly ChatMessage[],
  facts: TemplateFacts,
): readonly ChatMessage[] {
  const extra = facts.reasoningFields.filter((field) => field !== "reasoning_content");
  if (extra.length === 0) return messages;
  return messages.map((message) => {
    const reasoning = message.reasoning_content;
    if (reasoning === undefined) return message;
    const placed: ChatMessage = { ...message };
    for (const field of extra) if (placed[field] === undefined) placed[field] = reasoning;
    return placed;
  });
}
