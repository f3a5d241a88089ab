import type { BlockEntry, TierChoice } from "./block-index";
import { CachePart } from "./parts";
import type {
  BlockListing,
  BlockSelector,
  ClearReport,
  EvictReport,
  EvictTier,
  ListScope,
  ListedBlock,
  Tier,
} from "./reports";

/** Most blocks one page of listBlocks() holds. */
export const LIST_PAGE_BLOCKS_MAX = 1000;

/**
 * What operators do to the cache by hand, which before needed the server stopped and its directory
 * deleted: list blocks, evict some from a tier, clear a tenant's (or every tenant's) blocks.
 * Removal itself is the index's (BlockIndex.evict); this part decides what to remove.
 */
export class CacheMaintenance extends CachePart {
  /**
   * One page of cached blocks (those some tier holds), ordered by key, starting after the hex key
   * `after` ("" for the first page), at most LIST_PAGE_BLOCKS_MAX. With `names`, every tenant's blocks, each named when one of
   * the names has its root.
   */
  listBlocks(scope: ListScope, page: { size: number; after: string }): BlockListing {
    const rootHex = "tenant" in scope ? this.index.rootOf(scope.tenant).toString("hex") : null;
    const names = new Map<string, string>();
    if ("names" in scope)
      for (const name of scope.names) names.set(this.index.rootOf(name).toString("hex"), name);
    const held = this.index
      .entriesOf(rootHex)
      .filter((entry) => this.index.tierOf(entry) !== null)
      .sort((a, b) => (a.keyHex < b.keyHex ? -1 : 1));
    const from = page.after === "" ? 0 : held.findIndex((entry) => entry.keyHex > page.after);
    const size = Math.max(1, Math.min(page.size, LIST_PAGE_BLOCKS_MAX));
    const slice = from < 0 ? [] : held.slice(from, from + size);
    const last = from < 0 ? held.length : from + slice.length;
    return {
      blocks: slice.map((entry) => this.describe(entry, rootHex === null ? names : null)),
      nextAfter: last < held.length && slice.length > 0 ? slice[slice.length - 1].keyHex : "",
      total: held.length,
    };
  }

  private describe(entry: BlockEntry, names: Map<string, string> | null): ListedBlock {
    const tiers: Tier[] = [];
    if (this.ram.has(entry.keyHex)) tiers.push("ram");
    if (entry.ssd === "stored" && this.ssd?.has(entry.key)) tiers.push("ssd");
    const tenant = names?.get(entry.rootHex);
    return {
      key: entry.key,
      parentKey: entry.parentHex === entry.rootHex ? Buffer.alloc(0) : Buffer.from(entry.parentHex, "hex"),
      tiers,
      tokens: entry.tokenIds.length,
      bytes: entry.bytes,
      ssdBytes: this.ssd?.storedBytesOf(entry.keyHex) ?? 0,
      pin: this.pins.describe(entry.keyHex),
      usedAtMs: entry.usedAtMs,
      ...(tenant !== undefined && { tenant }),
    };
  }

  /**
   * Takes the tenant's selected blocks (keys, or the cached prefix of a prompt) out of RAM, SSD or
   * both. Pinned blocks are skipped unless `force`; a forced block that leaves every tier loses its
   * pins. SSD writes still queued are finished first, so that no evicted block is stored after.
   * Blocks below an evicted one stay, but a lookup no longer reaches them through it.
   */
  async evict(
    tenant: string,
    selector: BlockSelector,
    options: { tier: EvictTier; force: boolean },
  ): Promise<EvictReport> {
    const { found, missing } = this.index.select(tenant, selector);
    const from: TierChoice = { ram: options.tier !== "ssd", ssd: options.tier !== "ram" };
    const report: EvictReport = {
      evictedBlocks: 0,
      skippedPinnedBlocks: 0,
      missingKeys: missing,
      ramBytesFreed: 0,
      ssdBytesFreed: 0,
    };
    if (from.ssd) await this.ssd?.flush();
    const chosen: BlockEntry[] = [];
    for (const entry of new Set(found)) {
      if (!options.force && this.pins.isPinned(entry.keyHex)) report.skippedPinnedBlocks++;
      else chosen.push(entry);
    }
    // Concurrent deletes share the store's write batches (one fdatasync for many).
    const freed = await Promise.all(chosen.map((entry) => this.index.evict(entry, from)));
    for (const { ramBytes, ssdBytes } of freed) {
      if (ramBytes + ssdBytes > 0) report.evictedBlocks++;
      report.ramBytesFreed += ramBytes;
      report.ssdBytesFreed += ssdBytes;
    }
    return report;
  }

  /**
   * Removes every block of the tenant with root `rootHex` from every tier, pinned ones included
   * (their pins go too); with null, every tenant's, and whatever else the SSD store holds. Queued
   * SSD writes are finished first, so none lands after the clear.
   */
  async clear(rootHex: string | null): Promise<ClearReport> {
    await this.ssd?.flush();
    const report: ClearReport = { removedBlocks: 0, unpinnedBlocks: 0, ramBytesFreed: 0, ssdBytesFreed: 0 };
    const entries = this.index.entriesOf(rootHex).filter((entry) => this.index.tierOf(entry) !== null);
    for (const entry of entries) if (this.pins.isPinned(entry.keyHex)) report.unpinnedBlocks++;
    const both: TierChoice = { ram: true, ssd: true };
    for (const { ramBytes, ssdBytes } of await Promise.all(entries.map((e) => this.index.evict(e, both)))) {
      report.ramBytesFreed += ramBytes;
      report.ssdBytesFreed += ssdBytes;
    }
    report.removedBlocks = entries.length;
    if (rootHex === null && this.ssd) {
      // Blocks the index does not know (another model's, say) are part of "every tenant's" too.
      const unknown: Buffer[] = [];
      for await (const key of this.ssd.storedKeys())
        if (!this.index.get(key.toString("hex"))) unknown.push(key);
      for (const key of unknown) report.ssdBytesFreed += this.ssd.storedBytesOf(key.toString("hex"));
      await Promise.all(unknown.map((key) => this.ssd!.delete(key)));
      report.removedBlocks += unknown.length;
    }
    return report;
  }
}
