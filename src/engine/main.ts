// The engine process: loads the model, runs generation steps for every admitted request, and talks
// to the front end over IPC. It is the only process that touches MLX.
import type { Config } from "../config.js";
import { toKvparkError } from "../errors.js";
import { Engine } from "./engine.js";
import { exitWithParent } from "./parent-watch.js";
import type { FromEngine, ToEngine } from "../engine-ipc.js";

function send(msg: FromEngine): void {
  process.send!(msg);
}

async function main(): Promise<void> {
  exitWithParent();
  const config = JSON.parse(process.env.KVPARK_ENGINE_CONFIG ?? "{}") as Config;
  let engine: Engine;
  try {
    engine = await Engine.open(config, send);
  } catch (err) {
    const e = toKvparkError(err);
    send({ type: "fatal", code: e.code, message: e.message });
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
