import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  FinishReason,
  GenerateResponseSchema,
  PrefillStreamResponseSchema,
  InferenceService,
  type GenerateRequest,
  type GenerateResponse,
  type SamplingParams,
} from "../../gen/kvpark/v1/inference_pb.js";
import { tenantKey } from "../auth.js";
import type { Config } from "../config.js";
import type { EngineHost } from "../engine/host.js";
import type { FinishReason as EngineFinishReason, SamplingSettings } from "../engine/protocol.js";
import { invalidField, KvparkError } from "../errors.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import type { ModelInfo, PinHint } from "../engine/protocol.js";
import { PinKind } from "../../gen/kvpark/v1/common_pb.js";
import type { CacheOptions, PrefillStreamRequest } from "../../gen/kvpark/v1/inference_pb.js";
import type { Telemetry } from "../telemetry/index.js";
import type { HandleTable } from "./handles.js";
import { checkContext, promptTokens } from "./prompt.js";

/** What the Inference handlers need. */
export interface InferenceDeps {
  config: Config;
  engine: EngineHost;
  tokenizer: () => ModelTokenizer | undefined;
  admission: Admission;
  handles: HandleTable;
  /** Traces and metrics; undefined when telemetry is off. */
  telemetry?: Telemetry;
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

/** The served model and tokenizer, or UNAVAILABLE while the engine starts. */
export function served(deps: Pick<InferenceDeps, "engine" | "tokenizer">): {
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

/** The pin a request asks for, validated; undefined when it asks for none. */
export function pinHint(cache: CacheOptions | undefined, field: string, config: Config): PinHint | undefined {
  if (!cache || cache.pin === PinKind.UNSPECIFIED) {
    if (cache?.pinTtlSeconds)
      throw invalidField(`${field}.pin_ttl_seconds`, "set only with pin = PIN_KIND_SOFT");
    return undefined;
  }
  if (cache.pin === PinKind.HARD) {
    if (cache.pinTtlSeconds) throw invalidField(`${field}.pin_ttl_seconds`, "a hard pin has no time to live");
    return { kind: "hard" };
  }
  if (cache.pin !== PinKind.SOFT) throw invalidField(`${field}.pin`, `unknown pin kind ${cache.pin}`);
  return { kind: "soft", ttlMs: (cache.pinTtlSeconds || config.softPinTtlSeconds) * 1000 };
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
  const tenant = ctx.values.get(tenantKey);
  const sampling = samplingSettings(req.sampling, config);
  const pin = pinHint(req.cache, "cache", config);
  const { info, tokenizer } = served(deps);
  if (req.model && req.model !== info.name) {
    throw invalidField("model", `unknown model "${req.model}"; this server serves "${info.name}"`);
  }
  let tokens: number[] = [];
  if (req.handle) {
    const context = deps.handles.get(req.handle, tenant);
    if (!context) throw new KvparkError("NOT_FOUND", `handle: unknown or expired handle "${req.handle}"`);
    tokens = context;
  }
  if (!req.handle || req.prompt) tokens = [...tokens, ...promptTokens(req.prompt, "prompt", tokenizer, info)];
  checkContext(tokens.length, 1, info, "prompt");
  const leave = deps.admission.enter();
  const trace = deps.telemetry?.generation(ctx, {
    prompt: req.prompt,
    handle: req.handle,
    requestModel: req.model,
    sampling,
    info,
    arrivedAt: performance.timeOrigin + arrivedAt,
  });
  try {
    const events = engine.generate(
      {
        tokens,
        sampling,
        persist: req.cache?.persist ?? true,
        pin,
        tenant,
        arrivedAt: performance.timeOrigin + arrivedAt,
      },
      ctx.signal,
    );
    for await (const ev of events) {
      switch (ev.type) {
        case "started":
          trace?.started(ev.cache);
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
          trace?.delta(ev.text);
          yield response({ case: "delta", value: { tokenIds: ev.tokenIds, text: ev.text } });
          break;
        case "finished":
          trace?.finished(ev);
          yield response({
            case: "finished",
            value: { finishReason: finishReasons[ev.reason], usage: ev.usage, timings: ev.timings },
          });
          break;
      }
    }
  } catch (err) {
    trace?.failed(err);
    throw err;
  } finally {
    trace?.close();
    leave();
  }
}

/** Tokens of one PrefillStream piece; text is tokenized on its own, special tokens only at the very start. */
function pieceTokens(
  req: PrefillStreamRequest,
  index: number,
  atStart: boolean,
  tokenizer: ModelTokenizer,
  info: ModelInfo,
): number[] {
  const chunk = req.chunk;
  if (chunk.case === "text") return tokenizer.encode(chunk.value, { addSpecialTokens: atStart });
  if (chunk.case === "tokens") {
    const bad = chunk.value.ids.findIndex((id) => id >= info.vocabSize);
    if (bad >= 0) {
      throw invalidField(
        `requests[${index}].tokens.ids[${bad}]`,
        `token id ${chunk.value.ids[bad]} is outside the vocabulary (size ${info.vocabSize})`,
      );
    }
    return chunk.value.ids;
  }
  if (index === 0 && req.handle) return [];
  throw invalidField(`requests[${index}].chunk`, "required: set text or tokens");
}

async function* prefillStream(
  deps: InferenceDeps,
  requests: AsyncIterable<PrefillStreamRequest>,
  ctx: HandlerContext,
): AsyncGenerator<MessageInitShape<typeof PrefillStreamResponseSchema>> {
  const tenant = ctx.values.get(tenantKey);
  const { info, tokenizer } = served(deps);
  const input = requests[Symbol.asyncIterator]();
  const first = await input.next();
  if (first.done) throw invalidField("requests", "send at least one message");
  const head = first.value;
  let context: number[] = [];
  if (head.handle) {
    const known = deps.handles.get(head.handle, tenant);
    if (!known) throw new KvparkError("NOT_FOUND", `handle: unknown or expired handle "${head.handle}"`);
    context = [...known];
  }
  if (pinHint(head.cache, "cache", deps.config))
    throw invalidField("cache.pin", "pin prefilled context with KVBlocks.Pin");
  context.push(...pieceTokens(head, 0, context.length === 0, tokenizer, info));
  checkContext(context.length, 1, info, "context");
  const leave = deps.admission.enter();
  try {
    // A bad piece from the client ends the call in the engine as a cancellation would.
    const abort = new AbortController();
    ctx.signal.addEventListener("abort", () => abort.abort(ctx.signal.reason), { once: true });
    const call = deps.engine.call(
      (id) => ({
        type: "prefill-open",
        id,
        tenant,
        tokens: [...context],
        persist: head.cache?.persist ?? true,
      }),
      abort.signal,
    );
    // Pieces are read and sent to the engine while its progress streams back.
    const pump = (async () => {
      try {
        for (let i = 1; ; i++) {
          const next = await input.next();
          if (next.done) break;
          const piece = pieceTokens(next.value, i, false, tokenizer, info);
          checkContext(context.length + piece.length, 1, info, "context");
          context.push(...piece);
          call.send({ type: "prefill-append", id: call.id, tokens: piece });
        }
        call.send({ type: "prefill-close", id: call.id });
      } catch (err) {
        abort.abort(err);
      }
    })();
    for await (const ev of call.events) {
      if (ev.type !== "prefill-progress") continue;
      const done = ev.done;
      if (done) deps.telemetry?.prefillProgress(ctx, ev.progress);
      yield { ...ev.progress, handle: done ? deps.handles.create(tenant, [...context]) : "" };
    }
    await pump;
  } finally {
    leave();
  }
}

/** kvpark.v1.InferenceService. */
export function registerInference(router: ConnectRouter, deps: InferenceDeps): void {
  router.service(InferenceService, {
    generate: (req, ctx) => generate(deps, req, ctx),
    prefillStream: (requests, ctx) => prefillStream(deps, requests, ctx),
  });
}
