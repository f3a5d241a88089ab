// The engine process: loads the model, runs generation steps for every admitted request, and talks
// to the front end over IPC. It is the only process that touches MLX.
import type { Config } from "../config.js";
import { Engine } from "./engine.js";
import type { FromEngine, ToEngine } from "./protocol.js";

function send(msg: FromEngine): void {
  process.send!(msg);
}

async function main(): Promise<void> {
  const config = JSON.parse(process.env.KVPARK_ENGINE_CONFIG ?? "{}") as Config;
  let engine: Engine;
  try {
    engine = await Engine.open(config, send);
  } catch (err) {
    const e = err as Error & { code?: string };
    send({ type: "fatal", code: e.code ?? "MODEL_INVALID", message: e.message });
    process.exit(3);
  }
  process.on("message", (msg: ToEngine) => engine.handle(msg));
  // The front end going away (crash, kill -9) must not leave an orphan engine computing.
  process.on("disconnect", () => {
    void engine.close().finally(() => process.exit(0));
  });
  // Stopping writes what the cache still has queued for SSD, so a clean restart finds it there.
  process.on("SIGTERM", () => {
    void engine.close().finally(() => process.exit(0));
  });
  send({ type: "ready", info: engine.info });
}

void main();
