import type { LoadedModel, ModelCache } from "../model/loader.js";
import { Sampler } from "../model/sampler.js";
import { IncrementalDetokenizer, type ModelTokenizer } from "../model/tokenizer.js";
import type { FinishReason, FromEngine, ModelInfo, ToEngine } from "./protocol.js";
import { StopStringFilter } from "./stop-strings.js";

type GenerateMsg = Extract<ToEngine, { type: "generate" }>;

const now = () => performance.timeOrigin + performance.now();

/**
 * One request's generation, advanced a step at a time by the engine's scheduler: each step computes
 * one prefill chunk or decodes one token, and streams what it produced.
 */
export class Sequence {
  readonly id: number;
  private readonly cache: ModelCache;
  private readonly sampler: Sampler;
  private readonly detokenizer: IncrementalDetokenizer;
  private readonly stops: StopStringFilter;
  private prefilled = 0;
  private readonly generated: number[] = [];
  private started = false;
  private prefillMs = 0;
  private startedAt = 0;
  private firstTokenAt = 0;

  constructor(
    private readonly req: GenerateMsg,
    private readonly model: LoadedModel,
    private readonly tokenizer: ModelTokenizer,
    private readonly info: ModelInfo,
    private readonly chunkTokens: number,
    private readonly send: (msg: FromEngine) => void,
  ) {
    this.id = req.id;
    this.cache = model.newCache(Math.min(req.tokens.length + req.sampling.maxTokens, info.contextTokens));
    const { temperature, topP, topK, seed } = req.sampling;
    this.sampler = new Sampler({ temperature, topP, topK, seed, vocabLimit: tokenizer.vocabSize });
    this.detokenizer = new IncrementalDetokenizer(tokenizer, { skipSpecialTokens: true });
    this.stops = new StopStringFilter(req.sampling.stop);
  }

  /** Runs one step; returns true when the request is finished. */
  step(): boolean {
    if (!this.started) {
      this.started = true;
      this.startedAt = now();
      const n = this.req.tokens.length;
      this.send({
        type: "started",
        id: this.id,
        promptTokens: n,
        cache: {
          ramTokens: 0,
          ssdTokens: 0,
          recomputedTokens: n,
          recomputeChosenTokens: 0,
          corruptBlocks: 0,
        },
      });
    }
    const prompt = this.req.tokens;
    if (this.prefilled < prompt.length) {
      const t0 = performance.now();
      const chunk = prompt.slice(this.prefilled, this.prefilled + this.chunkTokens);
      const logits = this.model.forward(chunk, this.cache);
      this.prefilled += chunk.length;
      if (this.prefilled < prompt.length) {
        this.model.materialize(this.cache);
        this.prefillMs += performance.now() - t0;
        return false;
      }
      const token = this.sampler.sample(logits);
      this.prefillMs += performance.now() - t0;
      this.firstTokenAt = now();
      return this.accept(token);
    }
    const last = this.generated[this.generated.length - 1];
    return this.accept(this.sampler.sample(this.model.forward([last], this.cache)));
  }

  private accept(token: number): boolean {
    if (this.tokenizer.eosIds.has(token)) return this.finish("eos", []);
    this.generated.push(token);
    const { text, stopped } = this.stops.push(this.detokenizer.push(token));
    if (stopped) return this.finish("stop_string", [token], text);
    if (this.generated.length >= this.req.sampling.maxTokens) return this.finish("max_tokens", [token], text);
    if (this.req.tokens.length + this.generated.length >= this.info.contextTokens)
      return this.finish("context_limit", [token], text);
    this.send({ type: "delta", id: this.id, tokenIds: [token], text });
    return false;
  }

  private finish(reason: FinishReason, lastIds: number[], text = ""): boolean {
    const tail =
      reason === "stop_string"
        ? text
        : text + this.stops.push(this.detokenizer.flush()).text + this.stops.flush();
    if (lastIds.length || tail) this.send({ type: "delta", id: this.id, tokenIds: lastIds, text: tail });
    const end = now();
    const completion = this.generated.length;
    const decodeMs = end - (this.firstTokenAt || end);
    this.send({
      type: "finished",
      id: this.id,
      reason,
      usage: { promptTokens: this.req.tokens.length, completionTokens: completion, cachedTokens: 0 },
      timings: {
        ttftMs: (this.firstTokenAt || end) - this.req.arrivedAt,
        lookupMs: 0,
        restoreMs: 0,
        prefillMs: this.prefillMs,
        decodeTokensPerSecond: completion > 1 && decodeMs > 0 ? ((completion - 1) * 1000) / decodeMs : 0,
        totalMs: end - this.req.arrivedAt,
        queueMs: this.startedAt - this.req.arrivedAt,
      },
    });
    return true;
  }
}
