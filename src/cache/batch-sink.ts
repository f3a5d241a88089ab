import type { LayerBlock } from "../model/kv-cache";
import { encodeHeader, type TensorSpec } from "../util/safetensors";
import {
  blockDataBytes,
  blockTensor,
  hasRecurrentLayers,
  headRows,
  isRecurrentLayer,
  isSlidingLayer,
  type ModelShape,
  type ParsedBlock,
} from "./block-codec";
import type { BatchSink, VerifiedBlock } from "./layer-sink";
import type { RestoreReport, SequenceKV } from "./reports";
import type { Staging } from "./staging";

const now = () => performance.now();

/** Where a restore ends, for the recurrent layers' snapshot (see Restorer.restore). */
export interface Ending {
  layers: (LayerBlock | null)[] | null;
  block: ParsedBlock | null;
}

/**
 * The batch path of an SSD or shared-tier run, where it cannot be staged whole (LayerFileSink):
 * each batch's verified blocks are staged as one safetensors file whose tensors are whole layers
 * [1, kvHeads, tokens, headDim] (head-major pieces of every block, gathered by writev), loaded and
 * imported with one call. Files of few large tensors load faster than files of many small ones,
 * and one import per layer avoids a concatenation (README). A sliding-window layer stages only
 * the rows a query after the restore can see (`keepFrom`); a model with recurrent layers keeps the
 * last block in `ending`, whose snapshot the restore stages once where it ends (stageSnapshot).
 */
export class BlockBatchSink implements BatchSink {
  constructor(
    private readonly staging: Staging,
    private readonly model: ModelShape,
    private readonly kv: SequenceKV,
    private readonly report: RestoreReport,
    private readonly ending: Ending,
    private readonly keepFrom: (end: number) => number,
    /** Told the MLX bytes the batch's temporaries dropped. */
    private readonly dropped: (bytes: number) => void,
  ) {}

  add(valid: VerifiedBlock[], at: number): { tokens: number; bytes: number } {
    const { numLayers, kvHeads, headDim } = this.model;
    const tStage = now();
    const tokens = valid.reduce((n, v) => n + v.step.block.tokens, 0);
    const end = at + tokens;
    const specs: TensorSpec[] = [];
    let kvBytes = 0;
    const pieces: Buffer[] = [];
    for (let i = 0; i < numLayers; i++) {
      // A recurrent layer needs only the snapshot where the restore ends (stageSnapshot).
      if (isRecurrentLayer(this.model, i)) continue;
      // A sliding-window layer stages only the rows a query after the restore can see.
      const from = isSlidingLayer(this.model, i) ? this.keepFrom(end) : -Infinity;
      const skips: number[] = [];
      let start = at;
      for (const { step } of valid) {
        skips.push(Math.max(0, Math.min(step.block.tokens, from - start)));
        start += step.block.tokens;
      }
      const rows = tokens - skips.reduce((a, b) => a + b, 0);
      if (rows === 0) continue;
      for (const kind of ["keys", "values"] as const) {
        const byteLength = kvHeads * rows * headDim * 4;
        specs.push({ name: `${i}.${kind}`, dtype: "F32", shape: [1, kvHeads, rows, headDim], byteLength });
        kvBytes += byteLength;
        for (let h = 0; h < kvHeads; h++) {
          valid.forEach(({ step, block }, j) => {
            if (skips[j] === step.block.tokens) return;
            const tensor = blockTensor(block, i, kind);
            pieces.push(
              headRows(tensor, block.header.shape, h, step.block.tokens).subarray(skips[j] * headDim * 4),
            );
          });
        }
      }
    }
    const arrays = this.staging.bytesToArrays(encodeHeader(specs, {}), pieces);
    const tImport = now();
    this.report.stages.stageMs += tImport - tStage;
    const ranges = Array.from({ length: numLayers }, (_, i) =>
      arrays[`${i}.keys`] ? { keys: arrays[`${i}.keys`], values: arrays[`${i}.values`] } : null,
    );
    this.kv.import(at, ranges, end);
    if (hasRecurrentLayers(this.model)) {
      this.ending.layers = null;
      this.ending.block = valid[valid.length - 1].block;
    }
    this.report.stages.importMs += now() - tImport;
    this.dropped(kvBytes);
    // The blocks' snapshots were read, if not staged: the rate the cost model learns counts them,
    // as its estimate does (blockDataBytes).
    return { tokens, bytes: kvBytes + valid.length * blockDataBytes(this.model, 0) };
  }

  async finish(_ok: boolean, end: number): Promise<number> {
    return end;
  }
}

/**
 * Stages the recurrent layers' snapshot of a block read from SSD or Redis, where the restore ends:
 * one snapshot per restore, however many batches the blocks came in (each block of a hybrid
 * model carries one, 20 MB for qwen3.5-0.8b, and staging every batch's cost a second at 8k).
 */
export function stageSnapshot(
  staging: Staging,
  model: ModelShape,
  block: ParsedBlock,
  report: RestoreReport,
  dropped: (bytes: number) => void,
): (LayerBlock | null)[] {
  const t0 = now();
  const specs: TensorSpec[] = [];
  const pieces: Buffer[] = [];
  for (let i = 0; i < model.numLayers; i++) {
    if (!isRecurrentLayer(model, i)) continue;
    for (const kind of ["conv", "delta"] as const) {
      const data = blockTensor(block, i, kind);
      const shape = [1, ...block.file.tensors.get(`layers.${i}.${kind}`)!.shape];
      specs.push({ name: `${i}.${kind}`, dtype: "F32", shape, byteLength: data.length });
      pieces.push(data);
    }
  }
  const arrays = staging.bytesToArrays(encodeHeader(specs, {}), pieces);
  dropped(pieces.reduce((n, p) => n + p.length, 0));
  report.stages.stageMs += now() - t0;
  return Array.from({ length: model.numLayers }, (_, i) =>
    isRecurrentLayer(model, i) ? { conv: arrays[`${i}.conv`], delta: arrays[`${i}.delta`] } : null,
  );
}
