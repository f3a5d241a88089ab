import type { LayerKV } from "../model/kv-cache";
import type { PutResult } from "../store";
import {
  asBuffer,
  blockDataBytes,
  makeHeader,
  normalizeRecord,
  storedEnvelope,
  toRecord,
  verifyRecord,
  type KVBlockInput,
  type ParsedBlock,
} from "./block-codec";
import { BLOCK_KEY_BYTES } from "./block-key";
import type { BlockEntry } from "./block-index";
import { BlockError, type BlockErrorCode } from "./errors";
import { CachePart } from "./parts";
import { wireParent } from "./payloads";
import type { BlockRejection, GetBlockResult, PutBlocksReport } from "./reports";

/** Block transfer for the KVBlocks RPCs: blocks out as self-describing records (GetBlocks) and in (PutBlocks). */
export class BlockTransfer extends CachePart {
  /**
   * Yields one result per key, in order: the block as a self-describing record, or why not.
   * Keys of other tenants are NOT_FOUND. Blocks are read from SSD in batches, or encoded from
   * RAM when only RAM holds them.
   */
  async *getBlocks(
    tenant: string,
    keys: readonly Uint8Array[],
    options: { signal?: AbortSignal; batchBlocks?: number } = {},
  ): AsyncGenerator<GetBlockResult> {
    const rootHex = this.index.rootOf(tenant).toString("hex");
    const batchBlocks = options.batchBlocks ?? 64;
    for (let i = 0; i < keys.length; i += batchBlocks) {
      options.signal?.throwIfAborted();
      const batch = keys.slice(i, i + batchBlocks).map(asBuffer);
      const results: (GetBlockResult | null)[] = batch.map(() => null);
      const fromSsd: { j: number; entry: BlockEntry }[] = [];
      const fromRam: { j: number; entry: BlockEntry; layers: LayerKV[] }[] = [];
      batch.forEach((key, j) => {
        const entry = key.length === BLOCK_KEY_BYTES ? this.index.get(key.toString("hex")) : undefined;
        const ramBlock = entry && entry.rootHex === rootHex ? this.ram.get(entry.keyHex) : undefined;
        if (!entry || entry.rootHex !== rootHex) {
          results[j] = notFound(key);
        } else if (entry.ssd === "stored" && this.ssd?.has(entry.key)) {
          fromSsd.push({ j, entry });
        } else if (ramBlock) {
          fromRam.push({ j, entry, layers: ramBlock.layers });
        } else {
          results[j] = notFound(key);
        }
      });
      if (fromRam.length > 0) {
        const payloads = this.payloads.payloadsFromLayers(
          fromRam.map(({ entry, layers }) => ({ record: this.index.chainRecord(entry), layers })),
        );
        fromRam.forEach(({ j, entry }, k) => {
          const header = makeHeader(
            this.model,
            entry.key,
            wireParent(this.index.chainRecord(entry)),
            Array.from(entry.tokenIds),
          );
          results[j] = { key: batch[j], block: toRecord(header, payloads[k]), tier: "ram" };
        });
      }
      if (fromSsd.length > 0) {
        const read = await this.ssd!.getMany(fromSsd.map((s) => s.entry.key));
        for (let k = 0; k < fromSsd.length; k++) {
          const { j, entry } = fromSsd[k];
          const checked = this.payloads.checkStored(entry, read[k]);
          if (checked instanceof BlockError) {
            const corrupt = await this.index.onStoredFailure(entry, checked);
            results[j] = corrupt
              ? { key: batch[j], error: { code: "CORRUPT", message: checked.message } }
              : notFound(batch[j]);
          } else {
            results[j] = { key: batch[j], block: toRecord(checked.header, checked.payload), tier: "ssd" };
          }
        }
      }
      for (const result of results) yield result!;
    }
  }

  /**
   * Verifies and stores blocks received from a client or another node, in order, so a block
   * may name a parent sent earlier in the same call. Every check runs before anything is kept
   * (see verifyRecord); a block whose parent is unknown here is PARENT_MISSING. Accepted blocks
   * go to SSD when the tier exists (no MLX work), else into RAM.
   */
  async putBlocks(
    tenant: string,
    blocks: Iterable<KVBlockInput> | AsyncIterable<KVBlockInput>,
  ): Promise<PutBlocksReport> {
    const root = this.index.rootOf(tenant);
    const rootHex = root.toString("hex");
    const rejected: BlockRejection[] = [];
    const writes: Promise<void>[] = [];
    let accepted = 0;
    let index = -1;
    for await (const input of blocks) {
      index++;
      const record = normalizeRecord(input);
      const reject = (code: BlockErrorCode, message: string) =>
        rejected.push({ index, key: record.key, code, message });
      let parsed: ParsedBlock;
      try {
        parsed = verifyRecord(record, { model: this.model, blockTokens: this.options.blockTokens, root });
      } catch (err) {
        if (!(err instanceof BlockError)) throw err;
        reject(err.code, err.message);
        continue;
      }
      const parentHex = record.parentKey.length === 0 ? rootHex : record.parentKey.toString("hex");
      const parent = parentHex === rootHex ? null : this.index.get(parentHex);
      if (parentHex !== rootHex && (!parent || parent.rootHex !== rootHex)) {
        reject("PARENT_MISSING", "the parent block is not cached here; send the chain from its first block");
        continue;
      }
      if (parent && parent.tokenIds.length !== this.options.blockTokens) {
        reject("SHAPE_MISMATCH", "the parent block is a partial block, which ends its chain");
        continue;
      }
      const keyHex = record.key.toString("hex");
      const existing = this.index.get(keyHex);
      if (existing && this.index.tierOf(existing)) {
        accepted++;
        continue;
      }
      const entry: BlockEntry = existing ?? {
        key: Buffer.from(record.key),
        keyHex,
        parentHex,
        rootHex,
        tokenIds: Uint32Array.from(record.tokenIds),
        bytes: blockDataBytes(this.model, record.tokenIds.length),
        ssd: "none",
        sightings: 1,
      };
      if (this.ssd) {
        const stored = Buffer.concat([storedEnvelope(root), record.payload]);
        if (!this.ssd.hasRoom(stored.length)) await this.ssd.flush();
        let settle!: (result: PutResult) => void;
        const written = new Promise<PutResult>((resolve) => (settle = resolve));
        const queued = this.ssd.enqueue({
          keyHex,
          record: { ...this.index.chainRecord(entry), storedBytes: stored.length },
          bytes: stored.length,
          source: { stored },
          done: (result) => {
            this.index.onWritten(entry, result);
            settle(result);
          },
        });
        if (!queued) {
          reject("CAPACITY", "the SSD write queue is full");
          continue;
        }
        entry.ssd = "queued";
        this.index.addEntry(entry);
        const at = index;
        writes.push(
          written.then((result) => {
            if (result === "persisted") accepted++;
            else
              rejected.push({
                index: at,
                key: record.key,
                code: "CAPACITY",
                message: `the SSD tier refused the block: ${result}`,
              });
          }),
        );
      } else {
        const layers = this.payloads.layersFromPayload(parsed);
        if (!this.ram.insert(keyHex, layers, record.tokenIds.length, entry.bytes)) {
          reject("CAPACITY", "the RAM tier has no evictable room");
          continue;
        }
        this.index.addEntry(entry);
        accepted++;
      }
    }
    await Promise.all(writes);
    rejected.sort((a, b) => a.index - b.index);
    return { accepted, rejected };
  }
}

function notFound(key: Buffer): GetBlockResult {
  return { key, error: { code: "NOT_FOUND", message: "no such block for this tenant" } };
}
