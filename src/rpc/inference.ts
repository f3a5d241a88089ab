import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  FinishReason,
  GenerateResponseSchema,
  InferenceService,
  type GenerateRequest,
  type GenerateResponse,
  type SamplingParams,
} from "../../gen/kvpark/v1/inference_pb.js";
import { tenantKey } from "../auth.js";
import type { Config } from "../config.js";
import type { EngineHost } from "../engine/host.js";
import type { FinishReason as EngineFinishReason, SamplingSettings } from "../engine/protocol.js";
import { invalidField, KvparkError, toConnectError } from "../errors.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import { checkContext, promptTokens } from "./prompt.js";

/** What the Inference handlers need. */
export interface InferenceDeps {
  config: Config;
  engine: EngineHost;
  tokenizer: () => ModelTokenizer | undefined;
  admission: Admission;
}

/** Bounds the number of Generate/PrefillStream calls in flight. */
export class Admission {
  active = 0;
  constructor(private readonly max: number) {}
  enter(): () => void {
    if (this.active >= this.max) {
      throw new KvparkError(
        "RESOURCE_EXHAUSTED",
        `server busy: ${this.max} generation requests in flight (--requests-max); retry later`,
      );
    }
    this.active++;
    let left = false;
    return () => {
      if (!left) this.active--;
      left = true;
    };
  }
}

const STOP_STRINGS_MAX = 16;
const STOP_STRING_CHARS_MAX = 256;

const finishReasons: Record<EngineFinishReason, FinishReason> = {
  eos: FinishReason.EOS,
  stop_string: FinishReason.STOP_STRING,
  max_tokens: FinishReason.MAX_TOKENS,
  context_limit: FinishReason.CONTEXT_LIMIT,
};

/** Validates sampling parameters and fills defaults. */
export function samplingSettings(p: SamplingParams | undefined, config: Config): SamplingSettings {
  const maxTokens = p?.maxTokens ?? config.maxTokensDefault;
  if (maxTokens < 1 || maxTokens > config.maxTokensLimit) {
    throw invalidField(
      "sampling.max_tokens",
      `must be between 1 and ${config.maxTokensLimit}, got ${maxTokens}`,
    );
  }
  const temperature = p?.temperature ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 10) {
    throw invalidField("sampling.temperature", `must be between 0 and 10, got ${temperature}`);
  }
  const topP = p?.topP ?? 1;
  if (!Number.isFinite(topP) || topP <= 0 || topP > 1)
    throw invalidField("sampling.top_p", `must be in (0, 1], got ${topP}`);
  const topK = p?.topK ?? 0;
  if (topK < 0) throw invalidField("sampling.top_k", `must not be negative, got ${topK}`);
  const stop = p?.stop ?? [];
  if (stop.length > STOP_STRINGS_MAX)
    throw invalidField("sampling.stop", `at most ${STOP_STRINGS_MAX} stop strings`);
  stop.forEach((s, i) => {
    if (s.length === 0 || s.length > STOP_STRING_CHARS_MAX) {
      throw invalidField(`sampling.stop[${i}]`, `must have 1 to ${STOP_STRING_CHARS_MAX} characters`);
    }
  });
  // The seed is kept below 2^53 so it crosses the IPC boundary as an exact number.
  const seed = p?.seed !== undefined ? Number(p.seed % (1n << 53n)) : Math.floor(Math.random() * 2 ** 32);
  return { maxTokens, temperature, topP, topK, seed, stop };
}

function response(event: MessageInitShape<typeof GenerateResponseSchema>["event"]): GenerateResponse {
  return create(GenerateResponseSchema, { event });
}

async function* generate(
  deps: InferenceDeps,
  req: GenerateRequest,
  ctx: HandlerContext,
): AsyncGenerator<GenerateResponse> {
  const arrivedAt = performance.now();
  const { engine, config } = deps;
  const info = engine.info;
  const tokenizer = deps.tokenizer();
  if (!info || !tokenizer) {
    throw new KvparkError(
      "ENGINE_UNAVAILABLE",
      engine.fatal ? `no model is served: ${engine.fatal.message}` : "the engine is starting; retry shortly",
    );
  }
  if (req.model && req.model !== info.name) {
    throw invalidField("model", `unknown model "${req.model}"; this server serves "${info.name}"`);
  }
  if (req.handle) throw new KvparkError("NOT_FOUND", `handle: unknown handle "${req.handle}"`);
  const sampling = samplingSettings(req.sampling, config);
  const tokens = promptTokens(req.prompt, "prompt", tokenizer, info);
  checkContext(tokens.length, 1, info, "prompt");
  const leave = deps.admission.enter();
  try {
    const events = engine.generate(
      {
        tokens,
        sampling,
        persist: req.cache?.persist ?? true,
        tenant: ctx.values.get(tenantKey),
        arrivedAt: performance.timeOrigin + arrivedAt,
      },
      ctx.signal,
    );
    for await (const ev of events) {
      switch (ev.type) {
        case "started":
          yield response({
            case: "started",
            value: {
              model: info.name,
              modelFingerprint: info.fingerprint,
              promptTokens: ev.promptTokens,
              cache: ev.cache,
            },
          });
          break;
        case "delta":
          yield response({ case: "delta", value: { tokenIds: ev.tokenIds, text: ev.text } });
          break;
        case "finished":
          yield response({
            case: "finished",
            value: { finishReason: finishReasons[ev.reason], usage: ev.usage, timings: ev.timings },
          });
          break;
      }
    }
  } finally {
    leave();
  }
}

/** kvpark.v1.InferenceService. */
export function registerInference(router: ConnectRouter, deps: InferenceDeps): void {
  router.service(InferenceService, {
    async *generate(req, ctx) {
      try {
        yield* generate(deps, req, ctx);
      } catch (err) {
        if (ctx.signal.aborted && ctx.signal.reason instanceof ConnectError) throw ctx.signal.reason;
        throw toConnectError(err);
      }
    },
    // eslint-disable-next-line require-yield
    async *prefillStream() {
      throw new ConnectError(
        "PrefillStream needs the prefix cache, which this server does not run yet",
        Code.Unimplemented,
      );
    },
  });
}
