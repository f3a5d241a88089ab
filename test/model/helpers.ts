import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import type { ReferenceTensor } from "./reference";

const dirs: string[] = [];

/** A fresh directory under the OS temp dir, removed by `removeTempDirs`. */
export function tempDir(prefix = "kvpark-model-"): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** Every tensor of a checkpoint directory, read with mx.load, as float64 for the reference. */
export function referenceWeights(dir: string): Map<string, ReferenceTensor> {
  const weights = new Map<string, ReferenceTensor>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".safetensors"))) {
    const tensors = mx.load(path.join(dir, file)) as unknown as Record<string, mx.array>;
    for (const [name, value] of Object.entries(tensors)) {
      const values = value.astype(mx.float32).flatten().tolist() as number[];
      weights.set(name, { shape: value.shape, data: Float64Array.from(values) });
    }
  }
  return weights;
}

/** Largest |a - b| over two logits tables of the same shape. */
export function maxAbsDiff(a: mx.array, b: mx.array | Float64Array[]): number {
  const left = a.tolist() as number[][];
  const right = b instanceof mx.array ? (b.tolist() as number[][]) : b.map((row) => Array.from(row));
  expect(left.length).toBe(right.length);
  let max = 0;
  left.forEach((row, i) => {
    expect(row.length).toBe(right[i].length);
    row.forEach((value, j) => {
      max = Math.max(max, Math.abs(value - right[i][j]));
    });
  });
  return max;
}

/** Rows [start, end) of a [T, vocab] logits table. */
export function rows(logits: mx.array, start: number, end: number): mx.array {
  return logits.index(mx.Slice(start, end), mx.Slice());
}

/**
 * Writes the float32 twin of a quantized checkpoint: every packed layer dequantized with
 * mx.dequantize, everything else copied, config.json without its quantization entries.
 */
export function writeDequantizedTwin(src: string, dst: string): void {
  fs.mkdirSync(dst, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(src, "config.json"), "utf8"));
  const { group_size: groupSize, bits } = config.quantization;
  delete config.quantization;
  delete config.quantization_config;
  config.torch_dtype = "float32";
  for (const file of readdirSync(src)) {
    if (file === "config.json") {
      fs.writeFileSync(path.join(dst, file), JSON.stringify(config, null, 2) + "\n");
    } else if (file.endsWith(".safetensors")) {
      const tensors = mx.load(path.join(src, file)) as unknown as Record<string, mx.array>;
      const out: Record<string, mx.array> = {};
      for (const [name, value] of Object.entries(tensors)) {
        if (name.endsWith(".scales") || name.endsWith(".biases")) continue;
        const module = name.replace(/\.weight$/, "");
        const scales = tensors[`${module}.scales`];
        out[name] = scales
          ? mx.dequantize(
              value,
              scales.astype(mx.float32),
              tensors[`${module}.biases`].astype(mx.float32),
              groupSize,
              bits,
            )
          : value.astype(mx.float32);
      }
      mx.saveSafetensors(path.join(dst, file), out, { format: "mlx" });
    } else {
      fs.copyFileSync(path.join(src, file), path.join(dst, file));
    }
  }
}
