import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  FinishReason,
  GenerateResponseSchema,
  PrefillStreamResponseSchema,
  InferenceService,
  type GenerateRequest,
  type GenerateResponse,
} from "../../gen/kvpark/v1/inference_pb.js";
import { PinKind } from "../../gen/kvpark/v1/common_pb.js";
import type { CacheOptions, PrefillStreamRequest } from "../../gen/kvpark/v1/inference_pb.js";
import type { Config } from "../config.js";
import type { FinishReason as EngineFinishReason, ModelInfo, PinHint } from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import { tenantKey } from "../frontend/auth.js";
import type { ModelTokenizer } from "../model/tokenizer.js";
import { served, type RpcDeps } from "./deps.js";
import { ModelOutput } from "./model-output.js";
import { checkContext, pinHint, promptInput, quoted, samplingSettings } from "./validation.js";

const finishReasons: Record<EngineFinishReason, FinishReason> = {
  eos: FinishReason.EOS,
  stop_string: FinishReason.STOP_STRING,
  max_tokens: FinishReason.MAX_TOKENS,
  context_limit: FinishReason.CONTEXT_LIMIT,
};

/** The pin a Generate or PrefillStream asks for in its cache options. */
function cachePin(cache: CacheOptions | undefined, config: Config): PinHint | undefined {
  const fields = { kind: "cache.pin", ttl: "cache.pin_ttl_seconds" };
  if (!cache || cache.pin === PinKind.UNSPECIFIED) {
    if (cache?.pinTtlSeconds) throw invalidField(fields.ttl, "set only with pin = PIN_KIND_SOFT");
    return undefined;
  }
  return pinHint(cache.pin, cache.pinTtlSeconds, fields, config);
}

function response(event: MessageInitShape<typeof GenerateResponseSchema>["event"]): GenerateResponse {
  return create(GenerateResponseSchema, { event });
}

/**
 * What a generation needs of the call it serves: the call's context values (the tenant, the RPC
 * span) and its cancellation. A gRPC handler's context is one; the HTTP APIs make their own.
 */
export type CallContext = Pick<HandlerContext, "values" | "signal">;

/**
 * Generate: the stream of one generation, whichever API asked for it (Generate over gRPC and
 * Connect, the OpenAI and Anthropic HTTP APIs).
 */
export async function* generate(
  deps: RpcDeps,
  req: GenerateRequest,
  ctx: CallContext,
): AsyncGenerator<GenerateResponse> {
  const arrivedAt = performance.now();
  const { engine, config } = deps;
  const tenant = ctx.values.get(tenantKey);
  const sampling = samplingSettings(req.sampling, config);
  const pin = cachePin(req.cache, config);
  const { info, tokenizer } = served(deps);
  if (req.model && req.model !== info.name) {
    throw invalidField("model", `unknown model ${quoted(req.model)}; this server serves "${info.name}"`);
  }
  let tokens: number[] = [];
  if (req.handle) {
    const context = deps.handles.get(req.handle, tenant);
    if (!context)
      throw new KvparkError("NOT_FOUND", `handle: unknown or expired handle ${quoted(req.handle)}`);
    tokens = context;
  }
  let output: ModelOutput | undefined;
  if (!req.handle || req.prompt) {
    const input = promptInput(req.prompt, "prompt", tokenizer, info, { continuation: Boolean(req.handle) });
    tokens = [...tokens, ...input.ids];
    output = ModelOutput.forRequest(input.chat, input.rendered, sampling, tokenizer);
  }
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
        keepOutputMarkers: output !== undefined,
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
        case "progress":
          yield response({
            case: "progress",
            value: { promptTokensDone: ev.promptTokensDone, promptTokensTotal: ev.promptTokensTotal },
          });
          break;
        case "delta":
          trace?.delta(ev.text);
          if (!output) yield response({ case: "delta", value: { tokenIds: ev.tokenIds, text: ev.text } });
          else for (const event of output.push(ev.text, ev.tokenIds)) yield response(event);
          break;
        case "finished": {
          for (const event of output?.end() ?? []) yield response(event);
          trace?.finished(ev);
          // A turn that called tools and then ended ends for its tool calls.
          const toolCalls =
            (output?.toolCalls ?? 0) > 0 && (ev.reason === "eos" || ev.reason === "stop_string");
          const finishReason = toolCalls ? FinishReason.TOOL_CALLS : finishReasons[ev.reason];
          yield response({
            case: "finished",
            value: { finishReason, usage: ev.usage, timings: ev.timings },
          });
          break;
        }
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
  deps: RpcDeps,
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
    if (!known)
      throw new KvparkError("NOT_FOUND", `handle: unknown or expired handle ${quoted(head.handle)}`);
    context = [...known];
  }
  if (cachePin(head.cache, deps.config))
    throw invalidField("cache.pin", "pin prefilled context with KVBlocks.Pin");
  context.push(...pieceTokens(head, 0, context.length === 0, tokenizer, info));
  checkContext(context.length, 1, info, "context");
  const leave = deps.admission.enter();
  try {
    // A bad piece from the client ends the call in the engine as a cancellation would.
    const abort = new AbortController();
    const call = deps.engine.call(
      (id) => ({
        type: "prefill-open",
        id,
        tenant,
        tokens: [...context],
        persist: head.cache?.persist ?? true,
      }),
      AbortSignal.any([ctx.signal, abort.signal]),
    );
    // Pieces are read and sent to the engine while its progress streams back.
    const pump = (async () => {
      try {
        for (let i = 1; ; i++) {
          const next = await input.next();
          if (next.done) break;
          if (next.value.handle)
            throw invalidField(`requests[${i}].handle`, "only the first message may carry a handle");
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
export function registerInference(router: ConnectRouter, deps: RpcDeps): void {
  router.service(InferenceService, {
    generate: (req, ctx) => generate(deps, req, ctx),
    prefillStream: (requests, ctx) => prefillStream(deps, requests, ctx),
  });
}
