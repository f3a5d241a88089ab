// A kvpark Generate stream as the Anthropic Messages API's events (message_start, content blocks with
// their deltas, message_delta, message_stop), and those events folded into the Message a
// non-streaming request answers with: one mapping for both.
import { FinishReason, type CacheReport, type GenerateResponse } from "../../gen/kvpark/v1/inference_pb.js";

/** Token counts as Anthropic reports them, with kvpark's own figures under `kvpark`. */
export interface AnthropicUsage {
  /** Prompt tokens neither read from the cache nor written to it. */
  input_tokens: number;
  /** Prompt tokens computed and written to the prefix cache by this request (0 with the cache off). */
  cache_creation_input_tokens: number;
  /** Prompt tokens whose KV came from the prefix cache (RAM and SSD). */
  cache_read_input_tokens: number;
  output_tokens: number;
  cache_creation: null;
  server_tool_use: null;
  service_tier: "standard";
  kvpark: {
    prompt_tokens: number;
    ram_tokens: number;
    ssd_tokens: number;
    shared_tokens?: number;
    recomputed_tokens: number;
    diverged_tokens: number;
  };
}

type ContentBlock =
  | { type: "text"; text: string; citations: null }
  | { type: "thinking"; thinking: string; signature: string }
  | { type: "tool_use"; id: string; name: string; input: unknown; caller: { type: "direct" } };

type Delta =
  | { type: "text_delta"; text: string }
  | { type: "thinking_delta"; thinking: string }
  | { type: "input_json_delta"; partial_json: string };

export interface AnthropicMessage {
  id: string;
  type: "message";
  role: "assistant";
  model: string;
  content: ContentBlock[];
  stop_reason: string | null;
  stop_sequence: string | null;
  stop_details: null;
  container: null;
  usage: AnthropicUsage;
}

/** One event of a streamed Messages response (its SSE event name is its type). */
export type AnthropicEvent =
  | { type: "message_start"; message: AnthropicMessage }
  | { type: "content_block_start"; index: number; content_block: ContentBlock }
  | { type: "content_block_delta"; index: number; delta: Delta }
  | { type: "content_block_stop"; index: number }
  | {
      type: "message_delta";
      delta: { stop_reason: string; stop_sequence: string | null; stop_details: null; container: null };
      usage: AnthropicUsage;
    }
  | { type: "message_stop" }
  | { type: "ping" };

const STOP_REASONS: Partial<Record<FinishReason, string>> = {
  [FinishReason.EOS]: "end_turn",
  [FinishReason.STOP_STRING]: "stop_sequence",
  [FinishReason.MAX_TOKENS]: "max_tokens",
  [FinishReason.CONTEXT_LIMIT]: "model_context_window_exceeded",
  [FinishReason.TOOL_CALLS]: "tool_use",
};

/**
 * The usage of a request from kvpark's cache report. Anthropic's input figures add up to the prompt:
 * read from the cache, written to it (every prompt token computed and kept, so everything computed
 * when the cache is on, except tokens the cost model chose to recompute although they were cached),
 * and the rest.
 */
function inputUsage(promptTokens: number, cache: CacheReport | undefined, caching: boolean): AnthropicUsage {
  const ram = cache?.ramTokens ?? 0;
  const ssd = cache?.ssdTokens ?? 0;
  const shared = cache?.sharedTokens ?? 0;
  const recomputed = cache?.recomputedTokens ?? promptTokens;
  const created = caching ? Math.max(0, recomputed - (cache?.recomputeChosenTokens ?? 0)) : 0;
  return {
    input_tokens: promptTokens - ram - ssd - shared - created,
    cache_creation_input_tokens: created,
    cache_read_input_tokens: ram + ssd + shared,
    output_tokens: 0,
    cache_creation: null,
    server_tool_use: null,
    service_tier: "standard",
    kvpark: {
      prompt_tokens: promptTokens,
      ram_tokens: ram,
      ssd_tokens: ssd,
      ...(shared > 0 ? { shared_tokens: shared } : {}),
      recomputed_tokens: recomputed,
      diverged_tokens: cache?.divergedTokens ?? 0,
    },
  };
}

/** Turns the events of one Generate stream into the Messages API's events, in order. */
export class MessageEvents {
  private index = -1;
  private open: ContentBlock["type"] | undefined;
  private usage?: AnthropicUsage;
  private readonly outputIds: number[] = [];

  constructor(
    private readonly id: string,
    /** The request's stop sequences, to say which one ended the output. */
    private readonly stops: readonly string[],
    /** Whether prompts are written to the cache (--cache). */
    private readonly caching: boolean,
    /** The text of output token ids, special tokens left out. */
    private readonly decode: (ids: number[]) => string,
  ) {}

  /** The events one Generate response gives. */
  map(res: GenerateResponse): AnthropicEvent[] {
    const e = res.event;
    switch (e.case) {
      case "started": {
        this.usage = inputUsage(e.value.promptTokens, e.value.cache, this.caching);
        const message: AnthropicMessage = {
          id: this.id,
          type: "message",
          role: "assistant",
          model: e.value.model,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          stop_details: null,
          container: null,
          usage: this.usage,
        };
        return [{ type: "message_start", message }];
      }
      case "progress":
        return [{ type: "ping" }];
      case "delta":
        this.outputIds.push(...e.value.tokenIds);
        if (!e.value.text) return [];
        return [
          ...this.openBlock({ type: "text", text: "", citations: null }),
          {
            type: "content_block_delta",
            index: this.index,
            delta: { type: "text_delta", text: e.value.text },
          },
        ];
      case "reasoning":
        this.outputIds.push(...e.value.tokenIds);
        if (!e.value.text) return [];
        return [
          ...this.openBlock({ type: "thinking", thinking: "", signature: "" }),
          {
            type: "content_block_delta",
            index: this.index,
            delta: { type: "thinking_delta", thinking: e.value.text },
          },
        ];
      case "toolCall": {
        this.outputIds.push(...e.value.tokenIds);
        const { id, name, argumentsJson } = e.value;
        const block: ContentBlock = { type: "tool_use", id, name, input: {}, caller: { type: "direct" } };
        return [
          ...this.openBlock(block),
          {
            type: "content_block_delta",
            index: this.index,
            delta: { type: "input_json_delta", partial_json: argumentsJson },
          },
          ...this.closeBlock(),
        ];
      }
      case "finished": {
        const f = e.value;
        const usage = { ...this.usage!, output_tokens: f.usage?.completionTokens ?? 0 };
        const stopReason = STOP_REASONS[f.finishReason] ?? "end_turn";
        const stopSequence = stopReason === "stop_sequence" ? this.stopSequence() : null;
        return [
          ...this.closeBlock(),
          {
            type: "message_delta",
            delta: {
              stop_reason: stopReason,
              stop_sequence: stopSequence,
              stop_details: null,
              container: null,
            },
            usage,
          },
          { type: "message_stop" },
        ];
      }
      default:
        return [];
    }
  }

  /** Starts a block of the given kind unless one is open (text and thinking continue theirs). */
  private openBlock(block: ContentBlock): AnthropicEvent[] {
    if (this.open === block.type && block.type !== "tool_use") return [];
    const events = this.closeBlock();
    this.index++;
    this.open = block.type;
    events.push({ type: "content_block_start", index: this.index, content_block: block });
    return events;
  }

  private closeBlock(): AnthropicEvent[] {
    if (this.open === undefined) return [];
    this.open = undefined;
    return [{ type: "content_block_stop", index: this.index }];
  }

  /**
   * Which stop sequence ended the output: the one that starts first in its text (the engine cuts at
   * the earliest stop sequence present, the first listed among those starting at the same place).
   */
  private stopSequence(): string | null {
    if (this.stops.length <= 1) return this.stops[0] ?? null;
    const text = this.decode(this.outputIds);
    let best: { at: number; stop: string } | undefined;
    for (const stop of this.stops) {
      const at = text.indexOf(stop);
      if (at >= 0 && (!best || at < best.at)) best = { at, stop };
    }
    return best?.stop ?? null;
  }
}

/** The Message a stream of events describes (what a non-streaming request answers). */
export function foldMessage(events: Iterable<AnthropicEvent>): AnthropicMessage {
  let message: AnthropicMessage | undefined;
  let json = "";
  for (const ev of events) {
    if (ev.type === "message_start") message = { ...ev.message, content: [] };
    if (!message) continue;
    switch (ev.type) {
      case "content_block_start":
        message.content.push({ ...ev.content_block });
        json = "";
        break;
      case "content_block_delta": {
        const block = message.content[ev.index];
        if (ev.delta.type === "text_delta" && block.type === "text") block.text += ev.delta.text;
        else if (ev.delta.type === "thinking_delta" && block.type === "thinking")
          block.thinking += ev.delta.thinking;
        else if (ev.delta.type === "input_json_delta") json += ev.delta.partial_json;
        break;
      }
      case "content_block_stop": {
        const block = message.content[ev.index];
        if (block.type === "tool_use") block.input = JSON.parse(json || "{}");
        break;
      }
      case "message_delta":
        message.stop_reason = ev.delta.stop_reason;
        message.stop_sequence = ev.delta.stop_sequence;
        message.usage = ev.usage;
        break;
    }
  }
  if (!message) throw new Error("the generation ended before it started");
  return message;
}
