import type { Config } from "../config.js";
import type { RecentRequests } from "../console/recent-requests.js";
import type { ModelInfo } from "../engine-ipc.js";
import { KvparkError } from "../errors.js";
import type { Admission } from "../frontend/admission.js";
import type { EngineClient } from "../frontend/engine-client.js";
import type { HandleTable } from "../frontend/handles.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import type { Telemetry } from "../telemetry/index.js";
import type { CheckedChat } from "./chat.js";

/**
 * Tokenizing of a client's text as the served model's tokenizer does it, off the event loop when the
 * text is long (the front end's TokenizePool).
 */
export interface PromptEncoder {
  /** Text to token ids, with the tokenizer's special tokens (BOS...) when `addSpecialTokens`. */
  encode(text: string, addSpecialTokens: boolean): Promise<number[]>;
  /** A checked chat rendered with the model's chat template and tokenized, as `renderChat` does. */
  renderChat(
    chat: CheckedChat,
    field: string,
    continuation: boolean,
  ): Promise<{ prompt: string; ids: number[] }>;
}

/** What the kvpark.v1 handlers need from the front end. */
export interface RpcDeps {
  config: Config;
  engine: EngineClient;
  tokenizer: () => ModelTokenizer | undefined;
  /** The same model's tokenizing of prompts, which may run on worker threads; undefined until ready. */
  encoder: () => PromptEncoder | undefined;
  admission: Admission;
  handles: HandleTable;
  /** Traces and metrics; undefined when telemetry is off. */
  telemetry?: Telemetry;
  /** The web console's recent requests, which every generation adds to; undefined without --console. */
  recentRequests?: RecentRequests;
}

/** The served model, its tokenizer and its prompt encoder, or UNAVAILABLE while the engine starts. */
export function served(deps: Pick<RpcDeps, "engine" | "tokenizer" | "encoder">): {
  info: ModelInfo;
  tokenizer: ModelTokenizer;
  encoder: PromptEncoder;
} {
  const info = deps.engine.info;
  const tokenizer = deps.tokenizer();
  const encoder = deps.encoder();
  if (!info || !tokenizer || !encoder) {
    throw new KvparkError(
      "ENGINE_UNAVAILABLE",
      deps.engine.fatal
        ? `no model is served: ${deps.engine.fatal.message}`
        : "the engine is starting; retry shortly",
    );
  }
  return { info, tokenizer, encoder };
}
