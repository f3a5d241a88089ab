import type { ConnectRouter } from "@connectrpc/connect";
import { ModelService, ToolCallFormat } from "../../gen/kvpark/v1/model_pb.js";
import type { ModelInfo } from "../engine-ipc.js";
import { invalidField } from "../errors.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import { served, type RpcDeps } from "./deps.js";
import { promptInput } from "./validation.js";

const TOOL_CALL_FORMATS: Record<NonNullable<ModelTokenizer["toolCallFormat"]>, ToolCallFormat> = {
  hermes: ToolCallFormat.HERMES,
  llama3_json: ToolCallFormat.LLAMA3_JSON,
  mistral: ToolCallFormat.MISTRAL,
};

/** How the model writes tool calls and whether it reasons apart, as its template and tokenizer say. */
function modelTraits(tokenizer: ModelTokenizer): { toolCallFormat: ToolCallFormat; reasoning: boolean } {
  const format = tokenizer.toolCallFormat;
  return {
    toolCallFormat: format ? TOOL_CALL_FORMATS[format] : ToolCallFormat.UNSPECIFIED,
    reasoning: tokenizer.reasoning,
  };
}

/** The first of `ids` the tokenizer cannot turn into text, with the reason; undefined when all can. */
function unknownId(ids: readonly number[], tokenizer: ModelTokenizer, info: ModelInfo) {
  const outside = ids.findIndex((id) => id >= info.vocabSize);
  if (outside >= 0) return { index: outside, problem: `is outside the vocabulary (size ${info.vocabSize})` };
  try {
    tokenizer.decode(ids);
    return undefined;
  } catch {
    // Ids of the model's vocabulary that the tokenizer has no token for (padding rows).
    const index = ids.findIndex((id) => {
      try {
        tokenizer.decode([id]);
        return false;
      } catch {
        return true;
      }
    });
    return { index, problem: "has no token in the model's tokenizer" };
  }
}

/** kvpark.v1.ModelService: the served model's tokenizer and what it can do. */
export function registerModel(router: ConnectRouter, deps: RpcDeps): void {
  router.service(ModelService, {
    tokenize: async (req) => {
      const { info, encoder } = served(deps);
      // The ids are those Generate would compute from the same prompt.
      const { ids, rendered } = await promptInput(req.prompt, "prompt", encoder, info);
      return { ids, rendered: rendered ?? "" };
    },

    detokenize: (req) => {
      const { info, tokenizer } = served(deps);
      const bad = unknownId(req.ids, tokenizer, info);
      if (bad) throw invalidField(`ids[${bad.index}]`, `token id ${req.ids[bad.index]} ${bad.problem}`);
      return { text: tokenizer.decode(req.ids, { skipSpecialTokens: req.skipSpecialTokens }) };
    },

    info: () => {
      const { info, tokenizer } = served(deps);
      return {
        model: info.name,
        modelFingerprint: info.fingerprint,
        modelType: info.modelType,
        contextTokens: info.contextTokens,
        blockTokens: deps.config.blockTokens,
        vocabSize: info.vocabSize,
        chatTemplate: tokenizer.hasChatTemplate,
        ...modelTraits(tokenizer),
      };
    },
  });
}
