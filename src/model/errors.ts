import { KvparkError } from "../errors";

/**
 * Stable codes for every way a model directory can be unusable. The engine maps them to gRPC
 * statuses in one place; the code is the contract, the message is for people.
 */
export type ModelErrorCode =
  /** A file the layout requires (config.json, a weight shard, tokenizer.json...) is absent. */
  | "MODEL_FILE_MISSING"
  /** The directory is well formed but describes something kvpark does not run. */
  | "MODEL_UNSUPPORTED"
  /** A file is present but its content contradicts the layout or the config. */
  | "MODEL_INVALID";

/** An error in a model directory, carrying a stable `code` and a message naming the file, field and fix. */
export class ModelError extends KvparkError<ModelErrorCode> {
  constructor(code: ModelErrorCode, message: string) {
    super(code, message);
    this.name = "ModelError";
  }
}
