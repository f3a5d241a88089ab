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
import type { FinishReason as EngineFinishReason, FromEngine, ModelInfo, PinHint } from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import { callApiKey } from "../console/recent-requests.js";
import { tenantKey } from "../frontend/auth.js";
import { served, type PromptEncoder, type RpcDeps } from "./deps.js";
import { ModelOutput } from "./model-output.js";
import { checkContext, checkTextSize, pinHint, promptInput, quoted, samplingSettings } from "./validation.js";

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
  const { info, tokenizer, encoder } = served(deps);
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
    const input = await promptInput(req.prompt, "prompt", encoder, info, {
      continuation: Boolean(req.handle),
      usedTokens: tokens.length,
    });
    tokens = [...tokens, ...input.ids];
    output = ModelOutput.forRequest(input.chat, input.rendered, sampling, tokenizer);
  }
  checkContext(tokens.length, 1, info, "prompt");
  const leave = deps.admission.enter(tenant);
  const trace = deps.telemetry?.generation(ctx, {
    prompt: req.prompt,
    handle: req.handle,
    requestModel: req.model,
    sampling,
    info,
    arrivedAt: performance.timeOrigin + arrivedAt,
  });
  const recent = deps.recentRequests?.begin(tenant, ctx.values.get(callApiKey));
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
    // When the first token reached this process (epoch ms), for Timings.first_token_ipc_ms.
    let firstDeltaAt = 0;
    for await (const ev of events) {
      switch (ev.type) {
        case "started":
          trace?.started(ev.cache);
          recent?.started(ev.cache);
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
          firstDeltaAt ||= performance.timeOrigin + performance.now();
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
          recent?.finished(finishReason, ev.usage, ev.timings);
          yield response({
            case: "finished",
            value: { finishReason, usage: ev.usage, timings: clientTimings(ev, firstDeltaAt) },
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

/**
 * The Timings a client gets: the engine's, the restore's stages, and the first token's trip from the
 * engine to this process (0 when no token was generated).
 */
function clientTimings(ev: Extract<FromEngine, { type: "finished" }>, firstDeltaAt: number) {
  const st = ev.activity.restoreStages;
  const firstTokenAt = ev.phases.firstTokenAt;
  return {
    ...ev.timings,
    restoreRamMs: st.ramMs,
    restoreSsdReadWaitMs: st.ssdReadWaitMs,
    restoreSharedReadWaitMs: st.sharedReadWaitMs,
    restoreVerifyMs: st.verifyMs,
    restoreStageMs: st.stageMs,
    restoreImportMs: st.importMs,
    firstTokenIpcMs: firstDeltaAt && firstTokenAt ? Math.max(0, firstDeltaAt - firstTokenAt) : 0,
  };
}

/**
 * Tokens of one PrefillStream piece; text is tokenized on its own, special tokens only at the very
 * start, unless it is too long for what is left of the context after `usedTokens`.
 */
async function pieceTokens(
  req: PrefillStreamRequest,
  index: number,
  atStart: boolean,
  usedTokens: number,
  encoder: PromptEncoder,
  info: ModelInfo,
): Promise<number[]> {
  const chunk = req.chunk;
  if (chunk.case === "text") {
    checkTextSize(chunk.value.length, usedTokens, info, `requests[${index}].text`);
    return encoder.encode(chunk.value, atStart);
  }
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

/**
 * The next message of a PrefillStream, or DEADLINE_EXCEEDED once the client has sent none for
 * --prefill-idle-seconds: an idle stream would otherwise hold its admission slot and its engine
 * session for as long as its client keeps it open.
 */
async function nextMessage(
  input: AsyncIterator<PrefillStreamRequest>,
  idleSeconds: number,
): Promise<IteratorResult<PrefillStreamRequest>> {
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new KvparkError(
            "DEADLINE_EXCEEDED",
            `PrefillStream idle: no message arrived for ${idleSeconds} seconds (--prefill-idle-seconds), so the call was ended and its context dropped; send the next piece sooner, or close the stream once the context is complete`,
          ),
        ),
      idleSeconds * 1000,
    );
  });
  try {
    return await Promise.race([input.next(), idle]);
  } finally {
    clearTimeout(timer);
  }
}

async function* prefillStream(
  deps: RpcDeps,
  requests: AsyncIterable<PrefillStreamRequest>,
  ctx: HandlerContext,
): AsyncGenerator<MessageInitShape<typeof PrefillStreamResponseSchema>> {
  const tenant = ctx.values.get(tenantKey);
  const { info, encoder } = served(deps);
  const input = requests[Symbol.asyncIterator]();
  const first = await nextMessage(input, deps.config.prefillIdleSeconds);
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
  context.push(...(await pieceTokens(head, 0, context.length === 0, context.length, encoder, info)));
  checkContext(context.length, 1, info, "context");
  const leave = deps.admission.enter(tenant);
  try {
    // A bad piece from the client, or its silence, ends the call in the engine as a cancellation would.
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
          const next = await nextMessage(input, deps.config.prefillIdleSeconds);
          if (next.done) break;
          if (next.value.handle)
            throw invalidField(`requests[${i}].handle`, "only the first message may carry a handle");
          const piece = await pieceTokens(next.value, i, false, context.length, encoder, info);
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
