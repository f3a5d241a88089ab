// The front end's tokenizing of prompts: small ones in this thread, where a worker's round trip would
// cost more than the work, and long ones on worker threads (piscina), so that a long prompt never
// holds the event loop that answers health checks and streams every other call's tokens.
import * as fs from "node:fs";
import * as path from "node:path";
import { Piscina } from "piscina";
import { isErrorCode, KvparkError, type ErrorCode } from "../errors.js";
import { ModelTokenizer } from "../model/tokenizer.js";
import { renderChat, type CheckedChat } from "../rpc/chat.js";
import type { PromptEncoder } from "../rpc/deps.js";

/**
 * Text up to this many characters is tokenized in this thread. Measured with the tiny test model's
 * tokenizer on the 2-core machines kvpark is built on: a worker's round trip (posting the text,
 * waking the worker, cloning the ids back) adds 0.2 to 0.3 ms to the encoding itself, which takes
 * 0.1 to 0.3 ms for 256 characters of prose and 0.5 to 1.4 ms for 1,024. Below this size the round
 * trip costs more than the event loop would wait; above it, the wait grows with the text. Runs of one
 * character encode several times slower, which this small a limit keeps to a few milliseconds.
 */
export const INLINE_TEXT_CHARS_MAX = 256;

/** A worker's task: text to encode, or a checked chat to render and encode. */
export type TokenizeTask =
  | { op: "encode"; text: string; addSpecialTokens: boolean }
  | { op: "chat"; chat: CheckedChat; field: string; continuation: boolean };

/**
 * A worker's answer. kvpark's errors come back as data, since a thread boundary keeps an Error's
 * message but not its class or code.
 */
export type TokenizeResult =
  { ids: Uint32Array; prompt?: string } | { error: { code: ErrorCode; message: string } };

/** What a worker posts once it has loaded its tokenizer (or failed to, which its tasks then report). */
export const TOKENIZER_LOADED = "kvpark:tokenizer-loaded";

/** The compiled worker: next to this file when it runs compiled, in dist/ when it runs under ts-jest. */
function workerEntry(): string {
  const compiled = path.join(__dirname, "tokenize-worker.js");
  if (fs.existsSync(compiled)) return compiled;
  return path.resolve(__dirname, "../../dist/src/frontend/tokenize-worker.js");
}

/** One model's tokenizer, in this thread for small inputs and on `workers` threads for the rest. */
export class TokenizePool implements PromptEncoder {
  /** The tokenizer of this thread, also used for decoding and small prompts. */
  readonly tokenizer: ModelTokenizer;
  private readonly pool: Piscina<TokenizeTask, TokenizeResult>;
  /**
   * Resolves once every worker has loaded the tokenizer, which takes each of them a while of CPU
   * time (the front end waits for it before it says it is ready; see serve.ts).
   */
  readonly ready: Promise<void>;

  constructor(
    /** The model directory whose tokenizer every thread loads. */
    readonly dir: string,
    workers: number,
  ) {
    this.tokenizer = ModelTokenizer.fromDir(dir);
    this.pool = new Piscina({
      filename: workerEntry(),
      workerData: { dir },
      // Every worker starts now and loads the tokenizer once, not when the first long prompt comes.
      minThreads: workers,
      maxThreads: workers,
      idleTimeout: Infinity,
    });
    this.ready = new Promise((resolve) => {
      let loaded = 0;
      const done = () => {
        this.pool.off("message", onMessage).off("error", done);
        resolve();
      };
      const onMessage = (message: unknown) => {
        if (message === TOKENIZER_LOADED && ++loaded === workers) done();
      };
      // A worker that cannot even start is the pool's error; the calls that need one report it.
      this.pool.on("message", onMessage).on("error", done);
    });
  }

  async encode(text: string, addSpecialTokens: boolean): Promise<number[]> {
    if (text.length <= INLINE_TEXT_CHARS_MAX) return this.tokenizer.encode(text, { addSpecialTokens });
    return Array.from((await this.run({ op: "encode", text, addSpecialTokens })).ids);
  }

  async renderChat(
    chat: CheckedChat,
    field: string,
    continuation: boolean,
  ): Promise<{ prompt: string; ids: number[] }> {
    if (chat.chars <= INLINE_TEXT_CHARS_MAX) return renderChat(chat, this.tokenizer, field, continuation);
    const { ids, prompt } = await this.run({ op: "chat", chat, field, continuation });
    return { prompt: prompt ?? "", ids: Array.from(ids) };
  }

  /**
   * Stops the workers once the tasks already given to them are done. A task is not cancelled with
   * its call: piscina ends a running task by terminating its thread, which would then load the
   * tokenizer again, and refusing text by size first bounds every task to a context's worth.
   */
  close(): Promise<void> {
    return this.pool.close();
  }

  private async run(task: TokenizeTask): Promise<{ ids: Uint32Array; prompt?: string }> {
    const result = await this.pool.run(task);
    if ("error" in result) {
      const { code, message } = result.error;
      throw new KvparkError(isErrorCode(code) ? code : "INTERNAL", message);
    }
    return result;
  }
}
