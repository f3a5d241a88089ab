import { StoreReadError, type BlockError } from "./errors";
import type { PutResult } from "../store";
import { asBuffer, blockDataBytes, layoutVersionOf, type ModelShape } from "./block-codec";
import { BLOCK_KEY_BYTES, blockKey, rootKey } from "./block-key";
import type { ChainRecord } from "./chain-log";
import type { CacheOptions } from "./config";
import type { Pins } from "./pins";
import type { RamTier } from "./ram-tier";
import type { BlockSelector, LookupOptions, MatchedBlock, PrefixMatch, Tier } from "./reports";
import type { SsdTier } from "./ssd-tier";

/** Everything the index knows about one block. */
export interface BlockEntry {
  key: Buffer;
  keyHex: string;
  /** The previous block's key, or the tenant's root for a chain's first block. */
  parentHex: string;
  rootHex: string;
  tokenIds: Uint32Array;
  /** Bytes of the block's KV in MLX (float32). */
  bytes: number;
  /** The SSD copy: none, waiting in the write queue, or in the store (which may have evicted it since). */
  ssd: "none" | "queued" | "stored";
  /** Times the block was persisted by a request: the "reused" admission policy writes it at 2. */
  sightings: number;
  /** When a request last stored or restored the block (Unix ms); 0 for a block found on SSD at open. */
  usedAtMs: number;
  /** The shared tier's copy as this node knows it: queued, written (or read) by this node; absent otherwise. */
  shared?: "queued" | "stored";
  /** When this node wrote or read the shared copy (Unix ms), for its TTL. */
  sharedAtMs?: number;
}

/** Lookups' hits and misses per tier, evictions, and blocks removed on request (Evict, Clear). */
export interface IndexCounters {
  ramHits: number;
  ramMisses: number;
  ssdHits: number;
  ssdMisses: number;
  ramEvictions: number;
  ssdEvictions: number;
  ramRemoved: number;
  ssdRemoved: number;
}

function newCounters(): IndexCounters {
  return {
    ramHits: 0,
    ramMisses: 0,
    ssdHits: 0,
    ssdMisses: 0,
    ramEvictions: 0,
    ssdEvictions: 0,
    ramRemoved: 0,
    ssdRemoved: 0,
  };
}

/** The tiers a removal takes a block out of. */
export interface TierChoice {
  ram: boolean;
  ssd: boolean;
}

// Blocks the search for the longest cached line below a divergence looks at, at most.
const LINE_SEARCH_BLOCKS_MAX = 4096;

const now = () => performance.now();

/**
 * The block index: every block a tier holds or is about to hold, by key, with parent -> children
 * (token ids included) and the tenants' roots, and lookup, which walks it. The RAM tier reports
 * its evictions (onRamDrop); SSD evictions are noticed when a block's tier is asked (tierOf).
 */
export class BlockIndex {
  private readonly entries = new Map<string, BlockEntry>();
  private readonly children = new Map<string, Map<string, BlockEntry>>();
  private readonly roots = new Map<string, Buffer>();
  /** Lookups' hits and misses per tier, and evictions the index saw, server-wide. */
  readonly counters = newCounters();
  /** The same per tenant root (hex). */
  private readonly tenantCounters = new Map<string, IndexCounters>();
  /** Blocks that failed verification and were dropped. */
  corruptBlocks = 0;

  constructor(
    private readonly model: ModelShape,
    private readonly options: CacheOptions,
    private readonly ram: RamTier,
    private readonly ssd: SsdTier | null,
    private readonly pins: Pins,
  ) {}

  /** Blocks known to the index. */
  get size(): number {
    return this.entries.size;
  }

  get(keyHex: string): BlockEntry | undefined {
    return this.entries.get(keyHex);
  }

  /** Every entry, or those of the tenant with root `rootHex`; a copy, safe to change the index under. */
  entriesOf(rootHex: string | null): BlockEntry[] {
    const out: BlockEntry[] = [];
    for (const entry of this.entries.values())
      if (rootHex === null || entry.rootHex === rootHex) out.push(entry);
    return out;
  }

  /**
   * Tokens of the longest chain of blocks the index holds, from a tenant's root (or from a block
   * whose parent it no longer holds) to its last block: the largest restore it could serve.
   */
  longestChainTokens(): number {
    const reach = new Map<string, number>();
    let longest = 0;
    for (const entry of this.entries.values()) {
      // Up to a block already measured (or the chain's start), then down again, summing.
      const path: BlockEntry[] = [];
      let at: BlockEntry | undefined = entry;
      while (at && !reach.has(at.keyHex) && path.length <= this.entries.size) {
        path.push(at);
        at = this.entries.get(at.parentHex);
      }
      let tokens = at ? (reach.get(at.keyHex) ?? 0) : 0;
      for (let i = path.length - 1; i >= 0; i--) {
        tokens += path[i].tokenIds.length;
        reach.set(path[i].keyHex, tokens);
      }
      longest = Math.max(longest, tokens);
    }
    return longest;
  }

  /** The blocks whose parent is `keyHex` (a block key, or a tenant's root), ordered by key. */
  childrenOf(keyHex: string): BlockEntry[] {
    return [...(this.children.get(keyHex)?.values() ?? [])].sort((a, b) => (a.keyHex < b.keyHex ? -1 : 1));
  }

  /**
   * The longest cached prefix of `tokens` for `tenant`, block by block from the tenant's root:
   * a full block whose tokens all match continues the walk; otherwise the child sharing the most
   * leading tokens with the prompt ends it (a trailing partial block, or a block the prompt
   * diverges from mid-way, of which the matching leading tokens are reused). Synchronous: no
   * I/O, nothing is reserved (restore() re-checks each block).
   */
  lookup(tenant: string, tokens: readonly number[], options: LookupOptions = {}): PrefixMatch {
    const t0 = now();
    const B = this.options.blockTokens;
    const limit = Math.min(tokens.length, Math.max(0, options.tokensMax ?? tokens.length));
    const blocks: MatchedBlock[] = [];
    let parent = this.rootOf(tenant);
    let parentHex = parent.toString("hex");
    const counters = [this.counters, this.countersOf(parentHex)];
    const count = (field: keyof IndexCounters) => counters.forEach((c) => c[field]++);
    let pos = 0;
    let ramTokens = 0;
    let ssdTokens = 0;
    while (pos < limit) {
      const want = Math.min(B, limit - pos);
      let best: BlockEntry | null = null;
      let bestTokens = 0;
      let bestTier: Tier | null = null;
      if (want === B) {
        // The common case, a whole block equal to the prompt's next tokens, without a scan.
        const exact = this.entries.get(
          blockKey(
            parent,
            tokens.slice(pos, pos + B),
            this.model.fingerprint,
            layoutVersionOf(this.model),
          ).toString("hex"),
        );
        const tier = exact ? this.tierOf(exact) : null;
        if (exact && tier) {
          best = exact;
          bestTokens = B;
          bestTier = tier;
        }
      }
      if (!best) {
        for (const child of [...(this.children.get(parentHex)?.values() ?? [])]) {
          const shared = sharedPrefix(child.tokenIds, tokens, pos, want);
          if (shared === 0 || shared < bestTokens) continue;
          const tier = this.tierOf(child);
          if (!tier) continue;
          if (shared > bestTokens || (tier === "ram" && bestTier === "ssd")) {
            best = child;
            bestTokens = shared;
            bestTier = tier;
          }
        }
      }
      if (!best || !bestTier) {
        count("ramMisses");
        count("ssdMisses");
        break;
      }
      if (bestTier === "ram") {
        count("ramHits");
        ramTokens += bestTokens;
      } else {
        count("ramMisses");
        count("ssdHits");
        ssdTokens += bestTokens;
      }
      blocks.push({
        key: best.key,
        start: pos,
        tokens: bestTokens,
        blockTokens: best.tokenIds.length,
        tier: bestTier,
      });
      pos += bestTokens;
      // Only a full block used whole has children worth following.
      if (bestTokens < best.tokenIds.length || best.tokenIds.length < B) break;
      parent = best.key;
      parentHex = best.keyHex;
    }
    return {
      tenant,
      promptTokens: tokens.length,
      blocks,
      tokens: pos,
      ramTokens,
      ssdTokens,
      sharedTokens: 0,
      // A walk that stopped before the limit stopped at a difference or a chain's end; one stopped
      // by the limit did not.
      divergedTokens: pos < limit ? this.divergedTokens(blocks) : 0,
      lookupMs: now() - t0,
    };
  }

  /** See PrefixMatch.divergedTokens. */
  private divergedTokens(blocks: MatchedBlock[]): number {
    const last = blocks.at(-1);
    const entry = last && this.entries.get(last.key.toString("hex"));
    // A prompt that matched nothing followed no cached path, so it left none.
    if (!last || !entry) return 0;
    // The rest of the block the prompt left (none when it left at the block's end), then the
    // longest cached line below it: nothing for a trailing partial block, which ends its chain.
    return last.blockTokens - last.tokens + this.longestLine(entry);
  }

  /** Tokens of the longest line of cached blocks below `from` (LINE_SEARCH_BLOCKS_MAX looked at). */
  private longestLine(from: BlockEntry): number {
    let longest = 0;
    let searched = 0;
    const stack = [{ entry: from, tokens: 0 }];
    for (let next = stack.pop(); next; next = stack.pop()) {
      for (const child of [...(this.children.get(next.entry.keyHex)?.values() ?? [])]) {
        if (++searched > LINE_SEARCH_BLOCKS_MAX) return longest;
        if (!this.tierOf(child)) continue;
        const tokens = next.tokens + child.tokenIds.length;
        longest = Math.max(longest, tokens);
        stack.push({ entry: child, tokens });
      }
    }
    return longest;
  }

  /** The tenant's cached blocks a selector names, and the keys it names that are not cached. */
  select(tenant: string, selector: BlockSelector): { found: BlockEntry[]; missing: Buffer[] } {
    const rootHex = this.rootOf(tenant).toString("hex");
    if ("tokens" in selector) {
      const match = this.lookup(tenant, selector.tokens);
      return { found: match.blocks.map((b) => this.entries.get(b.key.toString("hex"))!), missing: [] };
    }
    const found: BlockEntry[] = [];
    const missing: Buffer[] = [];
    for (const bytes of selector.keys) {
      const key = asBuffer(bytes);
      const entry = key.length === BLOCK_KEY_BYTES ? this.entries.get(key.toString("hex")) : undefined;
      if (entry && entry.rootHex === rootHex && this.tierOf(entry)) found.push(entry);
      else missing.push(key);
    }
    return { found, missing };
  }

  /** The tenant's root key, which every key of its blocks descends from. */
  rootOf(tenant: string): Buffer {
    let root = this.roots.get(tenant);
    if (!root) {
      root = rootKey(tenant, this.model.fingerprint, layoutVersionOf(this.model));
      // Tenants are few (auth identities); the bound only guards against a caller passing junk.
      if (this.roots.size >= 65536) this.roots.clear();
      this.roots.set(tenant, root);
    }
    return root;
  }

  /** The fastest tier holding the block, or null; forgets SSD copies the store has evicted. */
  tierOf(entry: BlockEntry): Tier | null {
    if (this.ram.has(entry.keyHex)) return "ram";
    if (entry.ssd === "stored") {
      if (this.ssd?.has(entry.key)) return "ssd";
      this.onSsdGone(entry);
    }
    return null;
  }

  /** The store evicted the block (its cap): forgets the SSD copy and counts the eviction. */
  private onSsdGone(entry: BlockEntry): void {
    this.countersOf(entry.rootHex).ssdEvictions++;
    this.ssd?.forget(entry.keyHex);
    entry.ssd = "none";
    this.dropIfUnheld(entry);
  }

  /**
   * After a failed SSD read or check of a block: one the store no longer holds is forgotten, a
   * damaged one deleted and counted, one the store could not read now kept. True when it was damaged.
   */
  async onStoredFailure(entry: BlockEntry, err: BlockError): Promise<boolean> {
    if (err instanceof StoreReadError) return false;
    if (err.code === "NOT_FOUND") {
      this.onSsdGone(entry);
      return false;
    }
    await this.dropCorrupt(entry);
    return true;
  }

  /** Adds a block the SSD tier held at open. */
  indexStored(record: ChainRecord): void {
    this.addEntry({
      key: record.key,
      keyHex: record.key.toString("hex"),
      parentHex: record.parent.toString("hex"),
      rootHex: record.root.toString("hex"),
      tokenIds: record.tokenIds,
      bytes: blockDataBytes(this.model, record.tokenIds.length),
      ssd: "stored",
      sightings: 1,
      usedAtMs: 0,
    });
  }

  addEntry(entry: BlockEntry): void {
    this.entries.set(entry.keyHex, entry);
    let siblings = this.children.get(entry.parentHex);
    if (!siblings) this.children.set(entry.parentHex, (siblings = new Map()));
    siblings.set(entry.keyHex, entry);
  }

  private removeEntry(entry: BlockEntry): void {
    if (this.entries.get(entry.keyHex) !== entry) return;
    this.entries.delete(entry.keyHex);
    const siblings = this.children.get(entry.parentHex);
    siblings?.delete(entry.keyHex);
    if (siblings?.size === 0) this.children.delete(entry.parentHex);
    this.pins.forget(entry);
  }

  /** Removes the entry when no tier holds or is about to hold the block. */
  dropIfUnheld(entry: BlockEntry): void {
    if (entry.ssd === "none" && !this.ram.has(entry.keyHex)) this.removeEntry(entry);
  }

  /** The RAM tier dropped the block: evicted it, or removed it. */
  onRamDrop(keyHex: string, evicted: boolean): void {
    const entry = this.entries.get(keyHex);
    if (!entry) return;
    if (evicted) this.countersOf(entry.rootHex).ramEvictions++;
    this.dropIfUnheld(entry);
  }

  /**
   * The counters of the tenant with root `rootHex`: its lookups' hits and misses, its blocks the
   * RAM tier evicted, and its SSD blocks the index noticed the store had evicted.
   */
  countersOf(rootHex: string): IndexCounters {
    let counters = this.tenantCounters.get(rootHex);
    if (!counters) {
      // Tenants are few (auth identities); the bound only guards against a caller passing junk.
      if (this.tenantCounters.size >= 65536) this.tenantCounters.clear();
      this.tenantCounters.set(rootHex, (counters = newCounters()));
    }
    return counters;
  }

  /** Blocks of the tenant with root `rootHex` the index knows (any tier). */
  sizeOf(rootHex: string): number {
    let n = 0;
    for (const entry of this.entries.values()) if (entry.rootHex === rootHex) n++;
    return n;
  }

  /**
   * Takes a block out of the tiers `from` names, on request (Evict, Clear, a refused Import), and
   * counts it; returns the bytes each tier freed. A RAM copy goes even while requests hold it (a
   * restore keeps the arrays it took: see RamTier.evict). An SSD copy still waiting in the write
   * queue stays: the caller flushes the queue first. A block that leaves every tier leaves the
   * index, and its pins go with it (in the store and the pin journal too, so that a block stored
   * again under the same key is not pinned by a stale record).
   */
  async evict(entry: BlockEntry, from: TierChoice): Promise<{ ramBytes: number; ssdBytes: number }> {
    this.tierOf(entry); // forgets an SSD copy the store has evicted since
    const ramHeld = this.ram.has(entry.keyHex);
    const ssdHeld = entry.ssd === "stored";
    const ramGoes = ramHeld && from.ram;
    const ssdGoes = ssdHeld && from.ssd;
    const stays = (ramHeld && !ramGoes) || (ssdHeld && !ssdGoes) || entry.ssd === "queued";
    if (!stays && this.pins.isPinned(entry.keyHex)) this.pins.unpin([entry]);
    const counters = [this.counters, this.countersOf(entry.rootHex)];
    let ssdBytes = 0;
    let ramBytes = 0;
    let deleted: Promise<void> | undefined;
    if (ssdGoes) {
      ssdBytes = this.ssd!.storedBytesOf(entry.keyHex);
      entry.ssd = "none";
      counters.forEach((c) => c.ssdRemoved++);
      deleted = this.ssd!.delete(entry.key);
    }
    if (ramGoes) {
      ramBytes = this.ram.evict(entry.keyHex);
      counters.forEach((c) => c.ramRemoved++);
    }
    this.dropIfUnheld(entry);
    await deleted;
    return { ramBytes, ssdBytes };
  }

  /** Deletes a block that failed verification on SSD, and counts it. */
  async dropCorrupt(entry: BlockEntry): Promise<void> {
    this.corruptBlocks++;
    entry.ssd = "none";
    await this.ssd?.delete(entry.key);
    this.dropIfUnheld(entry);
  }

  /** Records the outcome of a block's SSD write; a block now stored receives its pins there. */
  onWritten(entry: BlockEntry, result: PutResult): void {
    if (result !== "persisted") {
      entry.ssd = "none";
      this.dropIfUnheld(entry);
      return;
    }
    entry.ssd = "stored";
    this.pins.onStored(entry);
  }

  /** The block's record in the SSD tier's chain log. */
  chainRecord(entry: BlockEntry): ChainRecord {
    return {
      key: entry.key,
      parent: Buffer.from(entry.parentHex, "hex"),
      root: Buffer.from(entry.rootHex, "hex"),
      tokenIds: entry.tokenIds,
      storedBytes: this.storedBytesEstimate(entry.tokenIds.length),
    };
  }

  storedBytesEstimate(tokens: number): number {
    // Envelope and header are a few KiB at most; the data dominates.
    return blockDataBytes(this.model, tokens) + 4096;
  }
}

/** Leading tokens of `block` equal to tokens[pos, pos + limit). */
function sharedPrefix(block: Uint32Array, tokens: readonly number[], pos: number, limit: number): number {
  const n = Math.min(block.length, limit);
  let i = 0;
  while (i < n && block[i] === tokens[pos + i]) i++;
  return i;
}
