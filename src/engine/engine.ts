import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import type { Config } from "../config.js";
import { KvparkError } from "../errors.js";
import { resolveModelDir } from "./models.js";
import { loadModel, type LoadedModel } from "../model/loader.js";
import { ModelTokenizer } from "../model/tokenizer.js";
import type { FromEngine, ModelInfo, ToEngine } from "./protocol.js";
import { Sequence } from "./sequence.js";

type GenerateMsg = Extract<ToEngine, { type: "generate" }>;

/** Phrase that, with --test-engine-abort, makes the engine run an operation MLX aborts on. */
export const TEST_ABORT_PHRASE = "__kvpark_abort__";

/**
 * Runs every admitted request a step at a time, round robin: one prefill chunk or one decode token per
 * request per turn. Each request keeps its own KV cache, so interleaving never changes a result, and a
 * long prefill only delays other requests' tokens by one chunk at a time.
 */
export class Engine {
  private readonly active: Sequence[] = [];
  private running = false;
  private stepsSinceGc = 0;

  private constructor(
    private readonly config: Config,
    private readonly model: LoadedModel,
    private readonly tokenizer: ModelTokenizer,
    readonly info: ModelInfo,
    private readonly send: (msg: FromEngine) => void,
  ) {}

  static async open(config: Config, send: (msg: FromEngine) => void): Promise<Engine> {
    const dir = await resolveModelDir(config.model, config.dataDir, (what, done, total) =>
      send({ type: "loading", what, loadedBytes: done, totalBytes: total }),
    );
    let lastReport = 0;
    const model = await loadModel(dir, {
      onProgress: (loadedBytes: number, totalBytes: number) => {
        // One progress line per ~5% keeps the log readable for multi-gigabyte models.
        if (loadedBytes === totalBytes || loadedBytes - lastReport >= totalBytes / 20) {
          lastReport = loadedBytes;
          send({ type: "loading", what: "weights", loadedBytes, totalBytes });
        }
      },
    });
    const tokenizer = ModelTokenizer.fromDir(dir);
    const weightBytes = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith(".safetensors"))
      .reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
    const info: ModelInfo = {
      name: config.modelName || path.basename(dir),
      dir,
      fingerprint: model.fingerprint,
      modelType: model.config.modelType,
      vocabSize: model.config.vocabSize,
      contextTokens: model.config.maxPositionEmbeddings,
      numLayers: model.numLayers,
      kvHeads: model.kvHeads,
      headDim: model.headDim,
      weightBytes,
    };
    return new Engine(config, model, tokenizer, info, send);
  }

  handle(msg: ToEngine): void {
    switch (msg.type) {
      case "generate":
        this.admit(msg);
        break;
      case "cancel": {
        const i = this.active.findIndex((s) => s.id === msg.id);
        if (i >= 0) this.active.splice(i, 1);
        break;
      }
    }
  }

  private admit(msg: GenerateMsg): void {
    if (this.config.testEngineAbort && this.tokenizer.decode(msg.tokens).includes(TEST_ABORT_PHRASE)) {
      // A half-precision matmul is unsupported on the CPU backend and aborts inside MLX, as a real
      // engine failure would.
      const a = mx.ones([4, 4], mx.float16);
      mx.eval(mx.matmul(a, a));
    }
    this.active.push(
      new Sequence(msg, this.model, this.tokenizer, this.info, this.config.prefillChunkTokens, this.send),
    );
    if (!this.running) void this.loop();
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (this.active.length > 0) {
        for (const seq of [...this.active]) {
          if (!this.active.includes(seq)) continue; // cancelled meanwhile
          let done: boolean;
          try {
            done = seq.step();
          } catch (err) {
            done = true;
            const e = err instanceof KvparkError ? err : new KvparkError("INTERNAL", (err as Error).message);
            this.send({ type: "failed", id: seq.id, code: e.code, message: e.message });
          }
          if (done) {
            this.active.splice(this.active.indexOf(seq), 1);
            this.collect(true);
          }
          // Let IPC messages (cancellations, new requests) in between steps.
          await new Promise((r) => setImmediate(r));
        }
        this.collect(false);
      }
    } finally {
      this.running = false;
    }
  }

  /**
   * MLX frees an array's memory only when its JS wrapper is garbage-collected, and V8 does not see
   * that memory, so the engine collects explicitly: after each request and every few dozen steps.
   */
  private collect(force: boolean): void {
    if (force || ++this.stepsSinceGc >= 32) {
      this.stepsSinceGc = 0;
      global.gc?.();
    }
  }

  close(): void {
    this.active.length = 0;
  }
}
