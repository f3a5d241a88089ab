import {
  blockDataBytes,
  blockTensor,
  hasRecurrentLayers,
  headRows,
  type ModelShape,
  type ParsedBlock,
} from "./block-codec";
import type { RestoreReport, SequenceKV } from "./reports";
import type { LayerFile } from "./staging";

const now = () => performance.now();

/** A block read from SSD or Redis that passed its checks, with its step of the restore's plan. */
export interface VerifiedBlock<Step extends { block: { tokens: number } } = { block: { tokens: number } }> {
  step: Step;
  block: ParsedBlock;
}

/**
 * Whether a restore into an empty sequence of this model can stage its SSD or shared run whole
 * (LayerFileSink): every layer attends over every position, so no row is skipped (sliding windows)
 * and no snapshot is staged (recurrent layers).
 */
export function stagesWhole(model: ModelShape): boolean {
  return !hasRecurrentLayers(model) && !model.layerTypes?.includes("sliding_attention");
}

/** Where a restore's checked batches go: loaded one by one, or written into a file of whole layers. */
export interface BatchSink<V extends VerifiedBlock = VerifiedBlock> {
  /** Takes a batch's blocks, placed from position `at`; returns their tokens and bytes read. */
  add(valid: V[], at: number): { tokens: number; bytes: number };
  /** Ends the run, which holds `end` tokens; `ok` false when it was aborted or failed. */
  finish(ok: boolean, end: number): Promise<void>;
}

/** Zeros written after a restored run's last row (one buffer, written as many times as needed). */
const ZEROS = Buffer.alloc(1024 * 1024);

/**
 * Writes each batch's rows into a LayerFile at their positions in the sequence's buffers, zeros
 * after the last one, then loads the file and hands the arrays to the sequence (ModelCache.adopt).
 */
export class LayerFileSink implements BatchSink {
  private readonly rowBytes: number;

  constructor(
    private readonly file: LayerFile,
    private readonly capacity: number,
    private readonly model: ModelShape,
    private readonly kv: SequenceKV,
    private readonly report: RestoreReport,
  ) {
    this.rowBytes = model.headDim * 4;
  }

  add(valid: VerifiedBlock[], at: number): { tokens: number; bytes: number } {
    const t0 = now();
    const { numLayers, kvHeads } = this.model;
    const tokens = valid.reduce((n, v) => n + v.step.block.tokens, 0);
    for (let i = 0; i < numLayers; i++) {
      for (const kind of ["keys", "values"] as const) {
        for (let h = 0; h < kvHeads; h++) {
          const pieces = valid.map(({ step, block }) =>
            headRows(blockTensor(block, i, kind), block.header.shape, h, step.block.tokens),
          );
          this.file.write(`${i}.${kind}`, (h * this.capacity + at) * this.rowBytes, pieces);
        }
      }
    }
    this.report.stages.stageMs += now() - t0;
    const kvBytes = tokens * 2 * numLayers * kvHeads * this.rowBytes;
    return { tokens, bytes: kvBytes + valid.length * blockDataBytes(this.model, 0) };
  }

  async finish(ok: boolean, end: number): Promise<void> {
    try {
      if (!ok || end === 0) return;
      const t0 = now();
      const { numLayers, kvHeads } = this.model;
      const tail = (this.capacity - end) * this.rowBytes;
      const zeros = Array.from({ length: Math.ceil(tail / ZEROS.length) }, (_, k) =>
        ZEROS.subarray(0, Math.min(ZEROS.length, tail - k * ZEROS.length)),
      );
      for (let i = 0; i < numLayers; i++) {
        for (const kind of ["keys", "values"]) {
          for (let h = 0; h < kvHeads; h++) {
            if (tail > 0) this.file.write(`${i}.${kind}`, (h * this.capacity + end) * this.rowBytes, zeros);
          }
        }
      }
      const arrays = await this.file.load();
      const t1 = now();
      this.report.stages.stageMs += t1 - t0;
      this.kv.adopt(
        Array.from({ length: numLayers }, (_, i) => ({
          keys: arrays[`${i}.keys`],
          values: arrays[`${i}.values`],
        })),
        end,
      );
      this.report.stages.importMs += now() - t1;
    } finally {
      await this.file.close();
    }
  }
}
