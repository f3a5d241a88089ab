import * as path from "node:path";
import { generateModel, presetNames } from "../model-gen/generate.js";

const USAGE = `Usage: kvpark model generate <preset> [--out DIR]

Writes a seeded random-weight model in the Hugging Face layout (config.json, safetensors weights,
tokenizer.json with a byte-level BPE, a chat template). Presets: ${presetNames().join(", ")}.
The output is deterministic. Default DIR: .kvpark/models/<preset>.`;

/** `kvpark model ...`; returns the exit code. */
export async function modelCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== "generate" || rest.includes("--help") || rest.includes("-h")) {
    console.log(USAGE);
    return sub === "generate" || sub === "--help" || sub === "-h" ? 0 : 2;
  }
  const preset = rest.find((a) => !a.startsWith("-"));
  const outAt = rest.indexOf("--out");
  if (!preset || (outAt >= 0 && !rest[outAt + 1])) {
    console.error(USAGE);
    return 2;
  }
  const out = path.resolve(outAt >= 0 ? rest[outAt + 1] : path.join(".kvpark", "models", preset));
  if (!presetNames().includes(preset)) {
    console.error(`kvpark: unknown preset "${preset}"; choose one of ${presetNames().join(", ")}`);
    return 2;
  }
  const started = Date.now();
  await generateModel(preset, out);
  console.log(`kvpark: wrote ${preset} to ${out} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}
