import type { LayerBlock } from "../model/kv-cache";
import type { PutResult } from "../store";
import { KvparkError } from "../errors";
import {
  asBuffer,
  blockDataBytes,
  makeHeader,
  normalizeRecord,
  storedEnvelope,
  toRecord,
  type KVBlockInput,
  type KVBlockRecord,
  type ParsedBlock,
} from "./block-codec";
import { verifyRecord } from "./block-verify";
import { BLOCK_KEY_BYTES } from "./block-key";
import type { BlockEntry } from "./block-index";
import { BundleReader, BundleWriter, checkBundleHeader, entryName, shortKey } from "./bundle";
import { BlockError, type BlockErrorCode } from "./errors";
import { CachePart } from "./parts";
import { wireParent } from "./payloads";
import type {
  BlockRejection,
  BlockSelector,
  ExportReport,
  GetBlockResult,
  ImportReport,
  PutBlocksReport,
} from "./reports";

/**
 * Block transfer for the KVBlocks RPCs: blocks out as self-describing records (GetBlocks) and in
 * (PutBlocks), and whole bundles of them out (Export) and in (Import).
 */
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
      const fromRam: { j: number; entry: BlockEntry; layers: LayerBlock[] }[] = [];
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
    const rejected: BlockRejection[] = [];
    const writes: Promise<void>[] = [];
    let accepted = 0;
    let index = -1;
    for await (const input of blocks) {
      const at = ++index;
      const record = normalizeRecord(input);
      const put = await this.putOne(record, root);
      if ("error" in put) {
        rejected.push({ index: at, key: record.key, ...put.error });
      } else if (!put.written) {
        accepted++;
      } else {
        writes.push(
          put.written.then((error) => {
            if (error) rejected.push({ index: at, key: record.key, ...error });
            else accepted++;
          }),
        );
      }
    }
    await Promise.all(writes);
    rejected.sort((a, b) => a.index - b.index);
    return { accepted, rejected };
  }

  /**
   * Verifies one block and starts storing it under `root`: refused with a reason, already held, or
   * stored (in RAM at once, or on SSD once `written` settles, with a reason if the tier refused it).
   * `added` is the entry the call created, which a caller undoing the call removes again.
   */
  private async putOne(
    record: KVBlockRecord,
    root: Buffer,
  ): Promise<
    { error: BlockFailure } | { present: boolean; added?: BlockEntry; written?: Promise<BlockFailure | null> }
  > {
    const rootHex = root.toString("hex");
    const refuse = (code: BlockErrorCode, message: string) => ({ error: { code, message } });
    let parsed: ParsedBlock;
    try {
      parsed = verifyRecord(record, { model: this.model, blockTokens: this.options.blockTokens, root });
    } catch (err) {
      if (!(err instanceof BlockError)) throw err;
      return refuse(err.code, err.message);
    }
    const parentHex = record.parentKey.length === 0 ? rootHex : record.parentKey.toString("hex");
    const parent = parentHex === rootHex ? null : this.index.get(parentHex);
    if (parentHex !== rootHex && (!parent || parent.rootHex !== rootHex)) {
      return refuse(
        "PARENT_MISSING",
        "the parent block is not cached here; send the chain from its first block",
      );
    }
    if (parent && parent.tokenIds.length !== this.options.blockTokens) {
      return refuse("SHAPE_MISMATCH", "the parent block is a partial block, which ends its chain");
    }
    const keyHex = record.key.toString("hex");
    const existing = this.index.get(keyHex);
    if (existing && this.index.tierOf(existing)) return { present: true };
    const entry: BlockEntry = existing ?? {
      key: Buffer.from(record.key),
      keyHex,
      parentHex,
      rootHex,
      tokenIds: Uint32Array.from(record.tokenIds),
      bytes: blockDataBytes(this.model, record.tokenIds.length),
      ssd: "none",
      sightings: 1,
      usedAtMs: this.nowMs(),
    };
    if (!this.ssd) {
      const layers = this.payloads.layersFromPayload(parsed);
      if (!this.ram.insert(keyHex, layers, record.tokenIds.length, entry.bytes)) {
        return refuse("CAPACITY", "the RAM tier has no evictable room");
      }
      this.index.addEntry(entry);
      return { present: false, added: entry };
    }
    const stored = Buffer.concat([storedEnvelope(root), record.payload]);
    if (!this.ssd.hasRoom(stored.length)) await this.ssd.flush();
    let settle!: (result: PutResult) => void;
    const result = new Promise<PutResult>((resolve) => (settle = resolve));
    const queued = this.ssd.enqueue({
      keyHex,
      record: { ...this.index.chainRecord(entry), storedBytes: stored.length },
      bytes: stored.length,
      source: { stored },
      done: (outcome) => {
        this.index.onWritten(entry, outcome);
        settle(outcome);
      },
    });
    if (!queued) return refuse("CAPACITY", "the SSD write queue is full");
    entry.ssd = "queued";
    this.index.addEntry(entry);
    const written = result.then((outcome) =>
      outcome === "persisted"
        ? null
        : { code: "CAPACITY" as const, message: `the SSD tier refused the block: ${outcome}` },
    );
    return { present: false, added: entry, written };
  }

  /**
   * A bundle of the tenant's blocks, entry by entry (bundle.ts): every block a lookup can reach
   * from the tenant's root, or the selected blocks with the blocks before them in their chains,
   * parents first. A block that is gone or fails verification by the time it is read is left out
   * with the blocks below it, and the manifest counts them (skippedBlocks). Keys the selection names
   * that are not cached are NOT_FOUND.
   */
  async *exportBundle(
    tenant: string,
    selector?: BlockSelector,
    options: { signal?: AbortSignal; report?: ExportReport } = {},
  ): AsyncGenerator<Buffer> {
    const rootHex = this.index.rootOf(tenant).toString("hex");
    let order: BlockEntry[];
    if (selector) {
      const { found, missing } = this.index.select(tenant, selector);
      if (missing.length > 0) {
        throw new KvparkError(
          "NOT_FOUND",
          `${missing.length} of the keys are not cached for this tenant, the first ${shortKey(missing[0])}`,
        );
      }
      order = this.chainsOf(found, rootHex);
    } else {
      order = this.reachable(rootHex);
    }
    const report = options.report ?? { blocks: 0, skippedBlocks: 0, bytes: 0 };
    const writer = new BundleWriter({
      model: this.model,
      blockTokens: this.options.blockTokens,
      createdUnixMs: this.nowMs(),
    });
    const emit = (bytes: Buffer) => {
      report.bytes += bytes.length;
      return bytes;
    };
    yield emit(writer.start());
    const skipped = new Set<string>();
    for (let i = 0; i < order.length; i += EXPORT_BATCH_BLOCKS) {
      options.signal?.throwIfAborted();
      const batch = order.slice(i, i + EXPORT_BATCH_BLOCKS);
      let j = 0;
      for await (const result of this.getBlocks(
        tenant,
        batch.map((e) => e.key),
        { batchBlocks: EXPORT_BATCH_BLOCKS },
      )) {
        const entry = batch[j++];
        if (!("block" in result) || skipped.has(entry.parentHex)) {
          skipped.add(entry.keyHex);
          continue;
        }
        report.blocks++;
        yield emit(writer.block(result.block));
      }
    }
    report.skippedBlocks = skipped.size;
    yield emit(writer.finish(skipped.size));
  }

  /** Every block a lookup of the tenant can reach, parents first (depth first, children by key). */
  private reachable(rootHex: string): BlockEntry[] {
    const out: BlockEntry[] = [];
    const stack = this.index.childrenOf(rootHex).reverse();
    for (let entry = stack.pop(); entry; entry = stack.pop()) {
      if (!this.index.tierOf(entry)) continue;
      out.push(entry);
      stack.push(...this.index.childrenOf(entry.keyHex).reverse());
    }
    return out;
  }

  /**
   * The blocks `found` and every block before them in their chains, parents first. A block whose
   * chain has a gap (an ancestor no tier holds) cannot be imported anywhere and is left out.
   */
  private chainsOf(found: readonly BlockEntry[], rootHex: string): BlockEntry[] {
    const depth = new Map<BlockEntry, number>();
    for (const start of found) {
      const path: BlockEntry[] = [];
      let entry: BlockEntry | undefined = start;
      while (entry && !depth.has(entry) && entry.parentHex !== rootHex) {
        path.push(entry);
        const parent = this.index.get(entry.parentHex);
        entry = parent && this.index.tierOf(parent) ? parent : undefined;
      }
      if (!entry) continue; // a gap
      let d = 0;
      if (depth.has(entry)) d = depth.get(entry)! + 1;
      else path.push(entry); // a chain's first block
      for (const e of path.reverse()) depth.set(e, d++);
    }
    return [...depth.keys()].sort((a, b) => depth.get(a)! - depth.get(b)! || (a.keyHex < b.keyHex ? -1 : 1));
  }

  /**
   * Stores the blocks of a bundle (bundle.ts) arriving in pieces, under the tenant: the header must
   * name the served model and block size, each block must pass everything PutBlocks checks (its key
   * recomputed from this tenant's root), and the bundle must end with a manifest that matches it.
   * Anything else fails the call with an error naming the entry, and the blocks the call stored are
   * removed again, so a refused bundle leaves the cache as it was.
   */
  async importBundle(tenant: string, pieces: AsyncIterable<Uint8Array>): Promise<ImportReport> {
    const root = this.index.rootOf(tenant);
    const reader = new BundleReader();
    const report: ImportReport = { blocks: 0, storedBlocks: 0, presentBlocks: 0, tokens: 0 };
    const added: BlockEntry[] = [];
    const writes: Promise<void>[] = [];
    let failure: KvparkError | undefined;
    const fail = (err: KvparkError) => (failure ??= err);
    try {
      for await (const piece of pieces) {
        for (const entry of reader.push(piece)) {
          if (entry.kind === "header") {
            checkBundleHeader(entry.header, this.model, this.options.blockTokens);
            continue;
          }
          if (entry.kind === "manifest") continue;
          const record = normalizeRecord(entry.block);
          const name = entryName(entry.index, record.key);
          report.blocks++;
          report.tokens += record.tokenIds.length;
          const put = await this.putOne(record, root);
          if ("error" in put) throw blockRefused(name, put.error);
          if (put.added) added.push(put.added);
          if (put.present) report.presentBlocks++;
          else report.storedBlocks++;
          if (put.written) {
            writes.push(
              put.written.then((error) => {
                if (error) fail(blockRefused(name, error));
              }),
            );
          }
        }
        if (failure) throw failure;
      }
      reader.end();
      await Promise.all(writes);
      if (failure) throw failure;
      return report;
    } catch (err) {
      await Promise.allSettled(writes);
      await Promise.all(added.map((entry) => this.index.evict(entry, { ram: true, ssd: true })));
      throw err;
    }
  }
}

/** Blocks read per SSD batch while exporting. */
const EXPORT_BATCH_BLOCKS = 16;

/** Why a block was not stored. */
interface BlockFailure {
  code: BlockErrorCode;
  message: string;
}

/** A bundle's block refused as PutBlocks would refuse it, named by its entry. */
function blockRefused(name: string, error: BlockFailure): KvparkError {
  return new KvparkError(error.code, `${name}: ${error.code}: ${error.message}`);
}

function notFound(key: Buffer): GetBlockResult {
  return { key, error: { code: "NOT_FOUND", message: "no such block for this tenant" } };
}
