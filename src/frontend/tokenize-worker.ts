// A worker thread of the front end's TokenizePool: loads the served model's tokenizer once, then
// encodes text and renders chats exactly as the front end does in its own thread.
import { parentPort } from "node:worker_threads";
import { workerData } from "piscina";
import { KvparkError } from "../errors.js";
import { ModelTokenizer } from "../model/tokenizer.js";
import { renderChat } from "../rpc/chat.js";
import { TOKENIZER_LOADED, type TokenizeResult, type TokenizeTask } from "./tokenize-pool.js";

// A tokenizer that cannot load fails each task with the reason, rather than the thread (which the
// pool would start again and again).
let loaded: ModelTokenizer | KvparkError;
try {
  loaded = ModelTokenizer.fromDir((workerData as { dir: string }).dir);
} catch (err) {
  loaded = err instanceof KvparkError ? err : new KvparkError("INTERNAL", (err as Error).message);
}
// Tells the pool this thread is done loading (see TokenizePool.ready).
parentPort?.postMessage(TOKENIZER_LOADED);

/** Runs one task; kvpark's errors are answered as data, anything else is thrown (INTERNAL). */
export default function tokenize(task: TokenizeTask): TokenizeResult {
  try {
    if (loaded instanceof KvparkError) throw loaded;
    if (task.op === "encode") {
      const ids = loaded.encode(task.text, { addSpecialTokens: task.addSpecialTokens });
      return { ids: Uint32Array.from(ids) };
    }
    const { prompt, ids } = renderChat(task.chat, loaded, task.field, task.continuation);
    return { prompt, ids: Uint32Array.from(ids) };
  } catch (err) {
    if (err instanceof KvparkError) return { error: { code: err.code, message: err.message } };
    throw err;
  }
}
