// A Generate stream as OpenAI's responses: chat completions and text completions, whole or as
// streamed chunks, with the usage (prompt tokens reused from the cache included).
import { randomBytes } from "node:crypto";
import {
  FinishReason,
  type GenerateFinished,
  type GenerateResponse,
  type GenerateStarted,
} from "../../gen/kvpark/v1/inference_pb.js";
import type { ToolCall } from "../../gen/kvpark/v1/common_pb.js";
import type { ModelInfo } from "../engine-ipc.js";

type Event = GenerateResponse["event"];

/** Which endpoint a response answers. */
export type Endpoint = "chat" | "text";

const FINISH_REASONS: Record<FinishReason, string | null> = {
  [FinishReason.UNSPECIFIED]: null,
  [FinishReason.EOS]: "stop",
  [FinishReason.STOP_STRING]: "stop",
  [FinishReason.MAX_TOKENS]: "length",
  [FinishReason.CONTEXT_LIMIT]: "length",
  [FinishReason.TOOL_CALLS]: "tool_calls",
};

/** OpenAI's usage, with what the prefix cache served and the time to the first token. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  completion_tokens_details: { reasoning_tokens: number };
  kvpark: {
    ram_tokens: number;
    ssd_tokens: number;
    shared_tokens?: number;
    recomputed_tokens: number;
    ttft_ms: number;
  };
}

/** Everything one generation produced, gathered from its events. */
export class Answer {
  text = "";
  reasoning = "";
  reasoningTokens = 0;
  calls: ToolCall[] = [];
  started?: GenerateStarted;
  finished?: GenerateFinished;

  add(e: Event): void {
    if (e.case === "started") this.started = e.value;
    else if (e.case === "delta") this.text += e.value.text;
    else if (e.case === "reasoning") {
      this.reasoning += e.value.text;
      this.reasoningTokens += e.value.tokenIds.length;
    } else if (e.case === "toolCall") this.calls.push(e.value);
    else if (e.case === "finished") this.finished = e.value;
  }

  get finishReason(): string | null {
    return FINISH_REASONS[this.finished?.finishReason ?? FinishReason.UNSPECIFIED];
  }

  get usage(): Usage {
    const cache = this.started?.cache;
    const prompt = this.finished?.usage?.promptTokens ?? this.started?.promptTokens ?? 0;
    const completion = this.finished?.usage?.completionTokens ?? 0;
    const ram = cache?.ramTokens ?? 0;
    const ssd = cache?.ssdTokens ?? 0;
    const shared = cache?.sharedTokens ?? 0;
    return {
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      prompt_tokens_details: { cached_tokens: ram + ssd + shared },
      completion_tokens_details: { reasoning_tokens: this.reasoningTokens },
      kvpark: {
        ram_tokens: ram,
        ssd_tokens: ssd,
        // Only from a node with a shared tier that used it, so other answers keep their shape.
        ...(shared > 0 ? { shared_tokens: shared } : {}),
        recomputed_tokens: cache?.recomputedTokens ?? 0,
        ttft_ms: Math.round((this.finished?.timings?.ttftMs ?? 0) * 1000) / 1000,
      },
    };
  }
}

/** The fields every response object and chunk of one request carries. */
interface Head {
  id: string;
  object: string;
  created: number;
  model: string;
  system_fingerprint: string;
}

function toolCallsOf(calls: ToolCall[]) {
  return calls.map((c) => ({
    id: c.id,
    type: "function" as const,
    function: { name: c.name, arguments: c.argumentsJson },
  }));
}

/** The response (or the chunks) of one request to /v1/chat/completions or /v1/completions. */
export class Responder {
  readonly answer = new Answer();
  private readonly head: Omit<Head, "object">;
  private toolCalls = 0;

  constructor(
    readonly endpoint: Endpoint,
    info: Pick<ModelInfo, "name" | "fingerprint">,
    private readonly includeUsage = false,
  ) {
    this.head = {
      id: `${endpoint === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`,
      created: Math.floor(Date.now() / 1000),
      model: info.name,
      system_fingerprint: `fp_${info.fingerprint.slice(0, 12)}`,
    };
  }

  /** The whole response, once every event has been added. */
  whole(): object {
    const a = this.answer;
    if (this.endpoint === "text") {
      // Text completions have no reasoning of their own: it is part of the text.
      const text = a.reasoning + a.text;
      return {
        ...this.headOf("text_completion"),
        choices: [{ index: 0, text, logprobs: null, finish_reason: a.finishReason }],
        usage: a.usage,
      };
    }
    const message = {
      role: "assistant",
      content: a.text === "" && a.calls.length > 0 ? null : a.text,
      refusal: null,
      ...(a.reasoning && { reasoning_content: a.reasoning }),
      ...(a.calls.length > 0 && { tool_calls: toolCallsOf(a.calls) }),
    };
    return {
      ...this.headOf("chat.completion"),
      choices: [{ index: 0, message, logprobs: null, finish_reason: a.finishReason }],
      usage: a.usage,
    };
  }

  /** The first chunk of a stream, before any output (chat only: it names the role). */
  opening(): object[] {
    return this.endpoint === "chat" ? [this.chunk({ role: "assistant", content: "" })] : [];
  }

  /** Adds an event; returns the chunks it streams. */
  push(e: Event): object[] {
    this.answer.add(e);
    switch (e.case) {
      case "delta":
        return e.value.text ? [this.chunk({ content: e.value.text })] : [];
      case "reasoning":
        if (!e.value.text) return [];
        return [
          this.chunk(
            this.endpoint === "chat" ? { reasoning_content: e.value.text } : { content: e.value.text },
          ),
        ];
      case "toolCall": {
        // As OpenAI streams a call: its index, id, type and name first, then its arguments.
        const index = this.toolCalls++;
        const { id, name, argumentsJson } = e.value;
        return [
          this.chunk({ tool_calls: [{ index, id, type: "function", function: { name, arguments: "" } }] }),
          this.chunk({ tool_calls: [{ index, function: { arguments: argumentsJson } }] }),
        ];
      }
      case "finished": {
        const last = this.chunk({}, this.answer.finishReason);
        if (!this.includeUsage) return [last];
        return [last, { ...this.headOf(this.chunkObject), choices: [], usage: this.answer.usage }];
      }
      default:
        return [];
    }
  }

  private get chunkObject(): string {
    return this.endpoint === "chat" ? "chat.completion.chunk" : "text_completion";
  }

  private headOf(object: string): Head {
    const { id, created, model, system_fingerprint } = this.head;
    return { id, object, created, model, system_fingerprint };
  }

  private chunk(delta: { content?: string } & Record<string, unknown>, finish: string | null = null): object {
    const choice =
      this.endpoint === "chat"
        ? { index: 0, delta, logprobs: null, finish_reason: finish }
        : { index: 0, text: delta.content ?? "", logprobs: null, finish_reason: finish };
    return {
      ...this.headOf(this.chunkObject),
      choices: [choice],
      ...(this.includeUsage && { usage: null }),
    };
  }
}
