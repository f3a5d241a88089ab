import type { LayerBlock } from "../model/kv-cache";
import { blockDataBytes, layoutVersionOf } from "./block-codec";
import { chainKeys } from "./block-key";
import type { BlockEntry } from "./block-index";
import { CachePart } from "./parts";
import type { PersistOptions, PersistReport, SequenceKV } from "./reports";

/**
 * Persist: the KV of a sequence into the RAM tier, block by block along its chain, and the blocks
 * the admission policy lets through onto the SSD tier's write queue.
 */
export class Persister extends CachePart {
  /**
   * Stores the KV of `tokens` (the sequence's tokens; those beyond its offset are ignored):
   * every block not in RAM is exported from the sequence into RAM (new blocks, and blocks
   * restored from SSD, which are promoted), the trailing partial block included, and queued for
   * SSD as the admission policy allows. Call it when a request ends (with prompt and generated
   * tokens) or at checkpoints of a long prefill. Synchronous; the SSD writes happen behind it.
   */
  persist(
    tenant: string,
    tokens: readonly number[],
    kv: SequenceKV,
    options: PersistOptions = {},
  ): PersistReport {
    const report: PersistReport = {
      blocksAdded: 0,
      blocksPromoted: 0,
      blocksPresent: 0,
      bytesAdded: 0,
      queuedToSsd: 0,
      ssdSkips: 0,
      ramRejects: 0,
    };
    if (options.persist === false) return report;
    const B = this.options.blockTokens;
    const n = kv.offset;
    if (tokens.length < n) throw new RangeError(`persist: ${tokens.length} tokens for a sequence of ${n}`);
    const end = options.partialTail === false ? Math.floor(n / B) * B : n;
    const fromTokens = options.fromTokens ?? 0;
    const root = this.index.rootOf(tenant);
    const rootHex = root.toString("hex");
    const used: string[] = [];
    const nowMs = this.nowMs();
    for (const link of chainKeys(root, tokens, B, this.model.fingerprint, end, layoutVersionOf(this.model))) {
      if (link.end <= fromTokens) continue;
      const keyHex = link.key.toString("hex");
      let entry = this.index.get(keyHex);
      const blockTokens = link.end - link.start;
      const ramBlock = this.ram.get(keyHex);
      if (entry && ramBlock) {
        entry.sightings++;
        entry.usedAtMs = nowMs;
        report.blocksPresent++;
        used.push(keyHex);
        this.admit(entry, ramBlock.layers, report, options.keepPace);
        continue;
      }
      if (!kv.canExport(link.start, link.end)) {
        // The sequence lacks part of this block: a recurrent layer's state after it (restored from
        // SSD with only its chain's last snapshot, or not captured), or a sliding-window layer's rows
        // older than its window, which a restore skips. A block already stored stays as it is and
        // the chain goes on; a new one cannot be made, nor anything after it.
        if (!entry) break;
        entry.sightings++;
        entry.usedAtMs = nowMs;
        report.blocksPresent++;
        continue;
      }
      const layers = kv.export(link.start, link.end);
      const bytes = blockDataBytes(this.model, blockTokens);
      const isNew = !entry;
      entry ??= {
        key: link.key,
        keyHex,
        parentHex: link.parent.toString("hex"),
        rootHex,
        tokenIds: Uint32Array.from(tokens.slice(link.start, link.end)),
        bytes,
        ssd: "none",
        sightings: 0,
        usedAtMs: 0,
      };
      entry.sightings++;
      entry.usedAtMs = nowMs;
      if (this.shared?.takeRestored(keyHex)) {
        // Restored from the shared tier: another node computed it, so this is a reuse, and the
        // tier holds it already.
        entry.sightings++;
        entry.shared = "stored";
        entry.sharedAtMs = nowMs;
      }
      if (!this.ram.insert(keyHex, layers, blockTokens, bytes)) {
        report.ramRejects++;
        this.droppedBytes += bytes;
        // Without room in RAM the rest of the chain cannot be held either.
        if (isNew) break;
        continue;
      }
      this.index.addEntry(entry);
      used.push(keyHex);
      if (isNew) report.blocksAdded++;
      else report.blocksPromoted++;
      report.bytesAdded += bytes;
      this.admit(entry, layers, report, options.keepPace);
    }
    for (const keyHex of used.reverse()) this.ram.touch(keyHex);
    return report;
  }

  /**
   * Queues a RAM block for SSD when the tier exists, does not have it, and the policy admits it;
   * the same for the shared tier, by its own policy.
   */
  private admit(entry: BlockEntry, layers: LayerBlock[], report?: PersistReport, keepPace = false): void {
    const pinned = this.pins.isPinned(entry.keyHex);
    this.admitShared(entry, layers, pinned, keepPace);
    if (!this.ssd || entry.ssd !== "none" || !this.ssd.admits(entry.sightings, pinned)) return;
    const queued = this.ssd.enqueue({
      keyHex: entry.keyHex,
      record: this.index.chainRecord(entry),
      bytes: this.index.storedBytesEstimate(entry.tokenIds.length),
      source: { layers },
      keepPace,
      done: (result) => this.index.onWritten(entry, result),
    });
    if (queued) {
      entry.ssd = "queued";
      if (report) report.queuedToSsd++;
    } else if (report) {
      report.ssdSkips++;
    }
  }

  /** Queues a RAM block for the shared tier, when there is one that this node has not given it to. */
  private admitShared(entry: BlockEntry, layers: LayerBlock[], pinned: boolean, keepPace: boolean): void {
    const shared = this.shared;
    if (!shared || entry.shared === "queued" || !shared.admits(entry.sightings, pinned)) return;
    if (entry.shared === "stored" && !shared.stale(entry.sharedAtMs ?? 0)) return;
    const queued = shared.enqueue({
      keyHex: entry.keyHex,
      key: entry.key,
      parent: Buffer.from(entry.parentHex, "hex"),
      root: Buffer.from(entry.rootHex, "hex"),
      tokenIds: entry.tokenIds,
      bytes: entry.bytes,
      layers,
      keepPace,
      done: (ok) => {
        if (ok) {
          entry.shared = "stored";
          entry.sharedAtMs = this.nowMs();
        } else {
          delete entry.shared;
        }
      },
    });
    if (queued) entry.shared = "queued";
  }

  /**
   * Queues the RAM copies of just pinned blocks for SSD, whatever the admission policy, so the
   * pins outlive RAM pressure.
   */
  admitPinned(entries: readonly BlockEntry[]): void {
    for (const entry of entries) {
      const ramBlock = this.ram.get(entry.keyHex);
      if (ramBlock) this.admit(entry, ramBlock.layers);
    }
  }
}
