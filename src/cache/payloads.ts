import { core as mx } from "@frost-beta/mlx";
import { isSnapshot, type LayerBlock } from "../model/kv-cache";
import { encodeHeader, type TensorSpec } from "../util/safetensors";
import {
  blockTensor,
  encodePayloadHeader,
  layerParts,
  makeHeader,
  openEnvelope,
  storedEnvelope,
  type ModelShape,
  type ParsedBlock,
} from "./block-codec";
import { parseBlockPayload } from "./block-verify";
import type { BlockEntry } from "./block-index";
import type { ChainRecord } from "./chain-log";
import { BlockError, StoreReadError } from "./errors";
import type { PendingWrite } from "./ssd-tier";
import type { Staging } from "./staging";

/**
 * Blocks between MLX arrays and block payloads (safetensors files), through the staging
 * directory: the SSD tier's encoder, payloads for GetBlocks, arrays of a block received with
 * PutBlocks; and the check of a block read back from the store.
 */
export class BlockPayloads {
  constructor(
    private readonly model: ModelShape,
    private readonly staging: Staging,
  ) {}

  /** The SSD tier's encoder: RAM blocks are saved in one staging file per batch, then split. */
  encodeForStore(items: readonly PendingWrite[]): Buffer[] {
    const fromRam = items.flatMap((item, j) =>
      "layers" in item.source ? [{ item, j, layers: item.source.layers }] : [],
    );
    const out: Buffer[] = items.map((item) =>
      "stored" in item.source ? item.source.stored : Buffer.alloc(0),
    );
    if (fromRam.length === 0) return out;
    const stored = this.payloadsFromLayers(
      fromRam.map(({ item, layers }) => ({ record: item.record, layers })),
      true,
    );
    fromRam.forEach(({ j }, k) => (out[j] = stored[k]));
    return out;
  }

  /**
   * Block payloads (safetensors files) of blocks held as MLX arrays, through one staging file;
   * with `envelope`, each preceded by its stored envelope (the SSD form).
   */
  payloadsFromLayers(blocks: { record: ChainRecord; layers: LayerBlock[] }[], envelope = false): Buffer[] {
    const arrays: Record<string, mx.array> = {};
    blocks.forEach(({ layers }, j) =>
      layers.forEach((layer, i) => {
        if (isSnapshot(layer)) {
          arrays[`${j}.${i}.conv`] = layer.conv;
          arrays[`${j}.${i}.delta`] = layer.delta;
        } else {
          arrays[`${j}.${i}.keys`] = layer.keys;
          arrays[`${j}.${i}.values`] = layer.values;
        }
      }),
    );
    const { bytes, file } = this.staging.arraysToBytes(arrays);
    return blocks.map(({ record }, j) => {
      const header = makeHeader(this.model, record.key, wireParent(record), Array.from(record.tokenIds));
      const pieces: Buffer[] = envelope ? [storedEnvelope(record.root)] : [];
      pieces.push(encodePayloadHeader(header));
      for (let i = 0; i < this.model.numLayers; i++) {
        for (const kind of layerParts(this.model, i)) {
          const info = file.tensors.get(`${j}.${i}.${kind}`)!;
          pieces.push(bytes.subarray(file.dataOffset + info.begin, file.dataOffset + info.end));
        }
      }
      return Buffer.concat(pieces);
    });
  }

  /**
   * One block's tensors as MLX arrays, through a staging file: keys and values
   * [1, kvHeads, tokens, headDim], snapshots [1, ...shape].
   */
  layersFromPayload(block: ParsedBlock): LayerBlock[] {
    const specs: TensorSpec[] = [];
    const pieces: Buffer[] = [];
    for (let i = 0; i < this.model.numLayers; i++) {
      for (const kind of layerParts(this.model, i)) {
        const data = blockTensor(block, i, kind);
        const info = block.file.tensors.get(`layers.${i}.${kind}`)!;
        specs.push({
          name: `${i}.${kind}`,
          dtype: "F32",
          shape: [1, ...info.shape],
          byteLength: data.length,
        });
        pieces.push(data);
      }
    }
    const arrays = this.staging.bytesToArrays(encodeHeader(specs, {}), pieces);
    return Array.from({ length: this.model.numLayers }, (_, i): LayerBlock =>
      layerParts(this.model, i)[0] === "conv"
        ? { conv: arrays[`${i}.conv`], delta: arrays[`${i}.delta`] }
        : { keys: arrays[`${i}.keys`], values: arrays[`${i}.values`] },
    );
  }

  /** Checks a block read from SSD against what the index says it is. */
  checkStored(entry: BlockEntry, result: Buffer | string): ParsedBlock | BlockError {
    if (typeof result === "string") {
      if (result === "KV_NOT_FOUND") return new BlockError("NOT_FOUND", "block left the SSD tier");
      if (result === "KV_CORRUPT") return new BlockError("CORRUPT", "the store refused the block's bytes");
      return new StoreReadError(result);
    }
    try {
      const { root, payload } = openEnvelope(result);
      const block = parseBlockPayload(payload, this.model);
      const h = block.header;
      const parentHex = h.parentKey.length === 0 ? root.toString("hex") : h.parentKey.toString("hex");
      if (
        !h.key.equals(entry.key) ||
        root.toString("hex") !== entry.rootHex ||
        parentHex !== entry.parentHex ||
        !sameTokens(h.tokenIds, entry.tokenIds)
      ) {
        return new BlockError("CORRUPT", "stored block differs from its index entry");
      }
      return block;
    } catch (err) {
      if (err instanceof BlockError) return new BlockError("CORRUPT", `${err.code}: ${err.message}`);
      throw err;
    }
  }
}

/** The parent key as the wire carries it: empty for the first block, whose parent is the root. */
export function wireParent(record: ChainRecord): Buffer {
  return record.parent.equals(record.root) ? Buffer.alloc(0) : record.parent;
}

function sameTokens(a: readonly number[], b: Uint32Array): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}
