import type { Config } from "../config.js";
import type { ModelInfo } from "../engine-ipc.js";
import { KvparkError } from "../errors.js";
import type { Admission } from "../frontend/admission.js";
import type { EngineClient } from "../frontend/engine-client.js";
import type { HandleTable } from "../frontend/handles.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import type { Telemetry } from "../telemetry/index.js";

/** What the kvpark.v1 handlers need from the front end. */
export interface RpcDeps {
  config: Config;
  engine: EngineClient;
  tokenizer: () => ModelTokenizer | undefined;
  admission: Admission;
  handles: HandleTable;
  /** Traces and metrics; undefined when telemetry is off. */
  telemetry?: Telemetry;
}

/** The served model and tokenizer, or UNAVAILABLE while the engine starts. */
export function served(deps: Pick<RpcDeps, "engine" | "tokenizer">): {
  info: ModelInfo;
  tokenizer: ModelTokenizer;
} {
  const info = deps.engine.info;
  const tokenizer = deps.tokenizer();
  if (!info || !tokenizer) {
    throw new KvparkError(
      "ENGINE_UNAVAILABLE",
      deps.engine.fatal
        ? `no model is served: ${deps.engine.fatal.message}`
        : "the engine is starting; retry shortly",
    );
  }
  return { info, tokenizer };
}
