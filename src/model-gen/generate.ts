import * as fs from "node:fs";
import * as path from "node:path";
import { KvparkError } from "../errors.js";
import { writeRandomCheckpoint } from "./checkpoint.js";
import { PRESETS } from "./presets.js";

/**
 * Version of what generation writes for a preset. Bump it whenever a preset would come out with other
 * bytes (weights, tokenizer, template), so that models an older kvpark generated under the data
 * directory are generated again instead of served stale.
 * 2: `<tool_call>` and `</tool_call>` became added tokens (Qwen2.5's tool-call markers).
 */
export const GENERATOR_VERSION = 2;

/** Written into a generated model's directory: what generated it. Not part of the model's fingerprint. */
export const GENERATED_STAMP_FILE = "kvpark-generated.json";

function stampOf(name: string): string {
  return JSON.stringify({ preset: name, generatorVersion: GENERATOR_VERSION }) + "\n";
}

/** Whether `dir` holds the model `name` as this version of kvpark generates it. */
export function isCurrentlyGenerated(dir: string, name: string): boolean {
  try {
    return fs.readFileSync(path.join(dir, GENERATED_STAMP_FILE), "utf8") === stampOf(name);
  } catch {
    return false;
  }
}

/** Names of the models kvpark can generate itself: every preset, plain, 4-bit and sharded. */
export function presetNames(): string[] {
  return Object.keys(PRESETS).flatMap((p) => [p, `${p}-4bit`, `${p}-sharded`]);
}

/** Splits a generated model's name into its preset and variant. */
export function parsePresetName(
  name: string,
): { preset: string; quantizeBits?: 4; shards?: number } | undefined {
  const m = /^(.*?)(-4bit|-sharded)?$/.exec(name)!;
  if (!(m[1] in PRESETS)) return undefined;
  if (m[2] === "-4bit") return { preset: m[1], quantizeBits: 4 };
  if (m[2] === "-sharded") return { preset: m[1], shards: 3 };
  return { preset: m[1] };
}

/** Writes a generated model into `dir` atomically (a half-written model is never left behind). */
export async function generateModel(name: string, dir: string): Promise<void> {
  const spec = parsePresetName(name);
  if (!spec)
    throw new KvparkError(
      "INVALID_ARGUMENT",
      `unknown preset "${name}"; choose one of ${presetNames().join(", ")}`,
    );
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  await writeRandomCheckpoint(tmp, {
    preset: spec.preset,
    seed: 0,
    quantizeBits: spec.quantizeBits,
    shards: spec.shards,
  });
  fs.writeFileSync(path.join(tmp, GENERATED_STAMP_FILE), stampOf(name));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(tmp, dir);
}

/**
 * Resolves --model: an existing directory is used as it is; a preset name is generated under the data
 * directory on first use and reused afterwards, unless an older kvpark generated it (see
 * GENERATOR_VERSION).
 */
export async function resolveModelDir(
  spec: string,
  dataDir: string,
  progress: (what: string, done: number, total: number) => void,
): Promise<string> {
  if (fs.existsSync(spec) && fs.statSync(spec).isDirectory()) return path.resolve(spec);
  if (!parsePresetName(spec)) {
    const e = new KvparkError(
      "INVALID_ARGUMENT",
      `--model ${spec}: no such directory, and not a preset (${presetNames().join(", ")})`,
    );
    (e as unknown as { code: string }).code = "MODEL_FILE_MISSING";
    throw e;
  }
  const dir = path.join(dataDir, "models", spec);
  if (!isCurrentlyGenerated(dir, spec)) {
    progress(`generating model ${spec}`, 0, 1);
    await generateModel(spec, dir);
    progress(`generated model ${spec}`, 1, 1);
  }
  return dir;
}
