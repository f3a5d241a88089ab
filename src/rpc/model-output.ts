// How a Generate's output is read: tool calls and reasoning parsed out of the model's text in the
// model family's format, and a required tool call forced by constrained decoding.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { GenerateResponseSchema } from "../../gen/kvpark/v1/inference_pb.js";
import { toolCallConstraint } from "../constraint-spec.js";
import type { SamplingSettings } from "../engine-ipc.js";
import { invalidField } from "../errors.js";
import { OutputParser, promptOpensReasoning, type OutputEvent } from "../model/tool-calls.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import type { CheckedChat } from "./chat.js";

type Event = MessageInitShape<typeof GenerateResponseSchema>["event"];

/** Reads a model's output into text, reasoning and tool-call events as it streams. */
export class ModelOutput {
  /** Tool calls emitted so far. */
  toolCalls = 0;

  private constructor(private readonly parser: OutputParser) {}

  /**
   * The reader a request needs, or undefined when its output is plain text (no tools, a model that
   * does not reason apart). Sets the sampling constraint of a required or named tool choice.
   */
  static forRequest(
    chat: CheckedChat | undefined,
    rendered: string | undefined,
    sampling: SamplingSettings,
    tokenizer: ModelTokenizer,
  ): ModelOutput | undefined {
    const tools = chat?.toolSpecs ?? [];
    const choice = chat?.toolChoice ?? "auto";
    const format = tools.length > 0 ? tokenizer.toolCallFormat : null;
    if (tools.length > 0 && format === null) {
      throw invalidField(
        "prompt.chat.tools",
        "the served model has no known tool-call format; send no tools",
      );
    }
    if (format !== null && (choice === "required" || typeof choice === "object")) {
      if (sampling.constraint)
        throw invalidField("sampling.response_format", "set no response format when a tool call is required");
      sampling.constraint = toolCallConstraint(format, tools, choice);
    }
    const parseTools = format !== null && choice !== "none";
    if (!parseTools && !tokenizer.reasoning) return undefined;
    return new ModelOutput(
      new OutputParser({
        format: parseTools ? format : null,
        reasoning: tokenizer.reasoning,
        startInReasoning: tokenizer.reasoning && rendered !== undefined && promptOpensReasoning(rendered),
        toolNames: tools.map((t) => t.name),
      }),
    );
  }

  /** The events of a text delta. */
  push(text: string, tokenIds: number[]): Event[] {
    return this.parser.push(text, tokenIds).flatMap((e) => this.event(e));
  }

  /** The events of what the parser still held when the output ended. */
  end(): Event[] {
    return this.parser.end().flatMap((e) => this.event(e));
  }

  private event(e: OutputEvent): Event[] {
    switch (e.kind) {
      case "text":
        return e.text || e.tokenIds.length
          ? [{ case: "delta", value: { tokenIds: e.tokenIds, text: e.text } }]
          : [];
      case "reasoning":
        return [{ case: "reasoning", value: { tokenIds: e.tokenIds, text: e.text } }];
      case "tool_call":
        this.toolCalls++;
        return [
          {
            case: "toolCall",
            value: { id: e.id, name: e.name, argumentsJson: e.argumentsJson, tokenIds: e.tokenIds },
          },
        ];
    }
  }
}
