import {
  blockDataBytes,
  blockTensor,
  hasRecurrentLayers,
  headRows,
  type ModelShape,
  type ParsedBlock,
} from "./block-codec";
import type { TensorSpec } from "../util/safetensors";
import type { RestoreReport, SequenceKV } from "./reports";
import type { LayerFile, Staging } from "./staging";

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

/**
 * The tensors of a layer file whose layers hold `capacity` positions: keys and values of every
 * layer, [1, kvHeads, capacity, headDim] float32.
 */
export function layerSpecs(model: ModelShape, capacity: number): TensorSpec[] {
  const shape = [1, model.kvHeads, capacity, model.headDim];
  const byteLength = model.kvHeads * capacity * model.headDim * 4;
  return Array.from({ length: model.numLayers }, (_, i) =>
    (["keys", "values"] as const).map((kind) => ({
      name: `${i}.${kind}`,
      dtype: "F32" as const,
      shape,
      byteLength,
    })),
  ).flat();
}

/** Where a restore's checked batches go: loaded one by one, or written into a file of whole layers. */
export interface BatchSink<V extends VerifiedBlock = VerifiedBlock> {
  /** Takes a batch's blocks, placed from position `at`; returns their tokens and bytes read. */
  add(valid: V[], at: number): { tokens: number; bytes: number };
  /**
   * Ends the run, whose blocks reach position `end`; `ok` false when it was aborted or failed.
   * Returns the position the sequence holds up to afterwards.
   */
  finish(ok: boolean, end: number): Promise<number>;
}

/** Zeros written after a restored run's last row (one buffer, written as many times as needed). */
const ZEROS = Buffer.alloc(1024 * 1024);

/**
 * Writes each batch's rows into a LayerFile at their positions in the sequence's buffers, zeros
 * after the last one, then loads the file and hands the arrays to the sequence (ModelCache.adopt).
 */
export class LayerFileSink implements BatchSink {
  private readonly rowBytes: number;
  /** Why the run could not be staged (a failed write into the file), once finish found it. */
  failure: Error | null = null;

  private constructor(
    private readonly file: LayerFile,
    private readonly capacity: number,
    private readonly model: ModelShape,
    private readonly kv: SequenceKV,
    private readonly report: RestoreReport,
  ) {
    this.rowBytes = model.headDim * 4;
  }

  /**
   * A sink for a run of `tokens` tokens when it can be staged whole: the run starts an empty
   * sequence (`at` 0) of a model whose layers all attend over every position (stagesWhole), and no
   * other restore holds the layer file. Its tensors are the sequence's whole buffers (or the run's
   * rows, padded once loaded, when the sequence reserved much more room than the run fills, so that
   * a prompt with a large max_tokens does not stage and load that many zeros), which the sequence
   * then adopts: each batch is written into them on the thread pool while the next is read and
   * checked, and one mx.load at the end, which runs in the background while the sequence's
   * forward starts (LayerFile.load), is the only copy (src/cache/README.md, *Restore*). Null:
   * load batch by batch.
   */
  static open(
    staging: Staging,
    model: ModelShape,
    kv: SequenceKV,
    at: number,
    tokens: number,
    report: RestoreReport,
  ): LayerFileSink | null {
    if (at !== 0 || kv.offset !== 0 || !stagesWhole(model)) return null;
    const rows = Math.ceil(tokens / kv.stepTokens) * kv.stepTokens;
    const room = kv.capacity - rows;
    const capacity = room <= Math.max(2 * kv.stepTokens, rows / 4) ? Math.max(kv.capacity, rows) : rows;
    const file = staging.layerFile(layerSpecs(model, capacity));
    return file && new LayerFileSink(file, capacity, model, kv, report);
  }

  add(valid: VerifiedBlock[], at: number): { tokens: number; bytes: number } {
    const t0 = now();
    const tokens = valid.reduce((n, v) => n + v.step.block.tokens, 0);
    this.eachHead((name, layer, kind, head) => {
      const pieces = valid.map(({ step, block }) =>
        headRows(blockTensor(block, layer, kind), block.header.shape, head, step.block.tokens),
      );
      this.file.write(name, this.offsetOf(head, at), pieces);
    });
    this.report.stages.stageMs += now() - t0;
    const kvBytes = tokens * 2 * this.model.numLayers * this.model.kvHeads * this.rowBytes;
    return { tokens, bytes: kvBytes + valid.length * blockDataBytes(this.model, 0) };
  }

  async finish(ok: boolean, end: number): Promise<number> {
    try {
      if (!ok || end === 0) return 0;
      const t0 = now();
      const tail = (this.capacity - end) * this.rowBytes;
      if (tail > 0) {
        const zeros = Array.from({ length: Math.ceil(tail / ZEROS.length) }, (_, k) =>
          ZEROS.subarray(0, Math.min(ZEROS.length, tail - k * ZEROS.length)),
        );
        this.eachHead((name, _layer, _kind, head) => this.file.write(name, this.offsetOf(head, end), zeros));
      }
      const arrays = await this.file.load();
      const t1 = now();
      this.report.stages.stageMs += t1 - t0;
      // A write that failed (a full tmpfs) leaves the sequence empty: its tokens are recomputed.
      if (!arrays) {
        this.failure = this.file.failure;
        return 0;
      }
      this.kv.adopt(
        Array.from({ length: this.model.numLayers }, (_, i) => ({
          keys: arrays[`${i}.keys`],
          values: arrays[`${i}.values`],
        })),
        end,
      );
      this.file.readBy(this.kv.state());
      this.report.stages.importMs += now() - t1;
      return end;
    } finally {
      await this.file.close();
    }
  }

  /** Resolves when the writes of the batches added so far have ended (LayerFile.settled). */
  settled(): Promise<void> {
    return this.file.settled();
  }

  /** Byte offset of position `position` of head `head` in a tensor's data. */
  private offsetOf(head: number, position: number): number {
    return (head * this.capacity + position) * this.rowBytes;
  }

  /** Calls `visit` for every head of every layer's keys and values. */
  private eachHead(
    visit: (name: string, layer: number, kind: "keys" | "values", head: number) => void,
  ): void {
    for (let i = 0; i < this.model.numLayers; i++) {
      for (const kind of ["keys", "values"] as const) {
        for (let h = 0; h < this.model.kvHeads; h++) visit(`${i}.${kind}`, i, kind, h);
      }
    }
  }
}

/**
 * Room of a read arena beyond the batch's data: the blocks' payload headers and the store's
 * alignment, for a batch of up to a few hundred blocks. A payload that does not fit is read into
 * memory of its own, so the room only has to be enough in the common case.
 */
const ARENA_SLACK_BYTES = 1024 * 1024;

/**
 * Two buffers a whole-layer restore reads its SSD batches into in turn (SsdTier.getManyInto): batch
 * b + 2 reuses batch b's once the writes from it into the layer file have ended. A fresh Buffer per
 * block adds external memory, and V8 answers that with full collections: 3 to 6 per 8k restore,
 * 33-47 ms of a 210-300 ms restore. One restore holds them at a time (another reads into fresh
 * Buffers); allocated by the first that needs them and kept, 2 x (restoreBatchBytesMax + 1 MiB).
 */
export class ReadArenas {
  private buffers: Buffer[] | null = null;
  private taken = false;

  constructor(private readonly batchBytesMax: number) {}

  /** Bytes the two arenas take once allocated. */
  get bytes(): number {
    return 2 * (this.batchBytesMax + ARENA_SLACK_BYTES);
  }

  /** The two arenas, or null while another restore holds them. */
  take(): Buffer[] | null {
    if (this.taken) return null;
    this.taken = true;
    return this.allocate();
  }

  /**
   * Allocates the arenas now and writes every page of them once, so that the first restore's
   * reads do not fault them in (a warm-up before the first request; see PrefixCache.warmUp).
   */
  prepare(): void {
    if (!this.taken) for (const arena of this.allocate()) arena.fill(0);
  }

  private allocate(): Buffer[] {
    const bytes = this.bytes / 2;
    this.buffers ??= [Buffer.allocUnsafeSlow(bytes), Buffer.allocUnsafeSlow(bytes)];
    return this.buffers;
  }

  /** Gives them back: no read into them and no write from them is running any more. */
  release(): void {
    this.taken = false;
  }
}
