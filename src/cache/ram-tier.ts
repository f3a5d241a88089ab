import type { LayerBlock } from "../model/kv-cache";

/**
 * One block held in RAM as MLX arrays, per layer its keys and values [1, kvHeads, tokens, headDim]
 * or, for a recurrent layer, its snapshot after the block's last token.
 */
export interface RamBlock {
  readonly keyHex: string;
  readonly layers: LayerBlock[];
  readonly tokens: number;
  readonly bytes: number;
  /** Requests using the block right now; a referenced block is never evicted. */
  refs: number;
}

/** Gauges and counters of the RAM tier. */
export interface RamTierStats {
  bytes: number;
  bytesMax: number;
  blocks: number;
  evictions: number;
  pinnedBlocks: number;
  /** Inserts refused because everything evictable was referenced or pinned. */
  insertRejects: number;
  /** Bytes of blocks dropped since start (evicted or removed). */
  freedBytes: number;
}

/**
 * The block pool (after vLLM v1's block_pool.py): blocks under a byte budget in LRU order and
 * reference counts while a request restores from them. Eviction takes the least recently used
 * block that is neither referenced nor pinned; whether a block is pinned is not the tier's to
 * decide: it asks `isPinned` (the cache's Pins) each time.
 *
 * Dropping a block only drops the JS wrappers of its arrays; MLX frees the memory when they are
 * garbage-collected (PLATFORM.md), so the tier counts the bytes it drops and the owner decides
 * when to collect.
 */
export class RamTier {
  // Map iteration order is insertion order: the first entry is the least recently used.
  private readonly blocks = new Map<string, RamBlock>();
  private bytesUsed = 0;
  private evictions = 0;
  private insertRejects = 0;
  private freedBytesTotal = 0;
  private freedBytesUntaken = 0;

  constructor(
    readonly bytesMax: number,
    /** Told about every block that leaves the tier, evicted (true) or removed. */
    private readonly onDrop: (keyHex: string, evicted: boolean) => void = () => {},
    /** Whether a pin protects the block now. */
    private readonly isPinned: (keyHex: string) => boolean = () => false,
  ) {}

  has(keyHex: string): boolean {
    return this.blocks.has(keyHex);
  }

  /** The block, without counting an access. */
  get(keyHex: string): RamBlock | undefined {
    return this.blocks.get(keyHex);
  }

  /**
   * Adds a block, evicting least recently used blocks to make room. Returns false, evicting
   * nothing, when the block cannot fit because the rest is referenced or pinned.
   */
  insert(keyHex: string, layers: LayerBlock[], tokens: number, bytes: number): boolean {
    const existing = this.blocks.get(keyHex);
    if (existing) {
      this.touch(keyHex);
      return true;
    }
    if (!this.makeRoom(bytes)) {
      this.insertRejects++;
      return false;
    }
    this.blocks.set(keyHex, { keyHex, layers, tokens, bytes, refs: 0 });
    this.bytesUsed += bytes;
    return true;
  }

  /** Takes a reference (the block cannot be evicted until release) and marks it used. */
  acquire(keyHex: string): RamBlock | undefined {
    const block = this.blocks.get(keyHex);
    if (!block) return undefined;
    block.refs++;
    this.touch(keyHex);
    return block;
  }

  /** Gives back a reference taken with acquire. */
  release(block: RamBlock): void {
    if (block.refs <= 0) throw new Error(`release of unreferenced block ${block.keyHex}`);
    block.refs--;
  }

  /** Marks the block most recently used. */
  touch(keyHex: string): void {
    const block = this.blocks.get(keyHex);
    if (!block) return;
    this.blocks.delete(keyHex);
    this.blocks.set(keyHex, block);
  }

  /** Drops an unreferenced block (e.g. one found bad); false when absent or in use. */
  remove(keyHex: string): boolean {
    const block = this.blocks.get(keyHex);
    if (!block || block.refs > 0) return false;
    this.drop(block);
    return true;
  }

  /**
   * Drops a block on request (Evict, Clear), referenced or not; returns its bytes, 0 when absent.
   * A request restoring from it keeps the arrays it acquired (the block object stays valid, and its
   * release only drops the reference), so its restore completes; the block is just no longer found.
   */
  evict(keyHex: string): number {
    const block = this.blocks.get(keyHex);
    if (!block) return 0;
    this.drop(block);
    return block.bytes;
  }

  /** Bytes dropped since the previous call: what a garbage collection could give back. */
  takeFreedBytes(): number {
    const bytes = this.freedBytesUntaken;
    this.freedBytesUntaken = 0;
    return bytes;
  }

  /** The tier's numbers; with `only`, bytes, blocks and pinned blocks count just the blocks it selects. */
  stats(only?: (keyHex: string) => boolean): RamTierStats {
    let pinnedBlocks = 0;
    let bytes = 0;
    let blocks = 0;
    for (const block of this.blocks.values()) {
      if (only && !only(block.keyHex)) continue;
      blocks++;
      bytes += block.bytes;
      if (this.isPinned(block.keyHex)) pinnedBlocks++;
    }
    return {
      bytes,
      bytesMax: this.bytesMax,
      blocks,
      evictions: this.evictions,
      pinnedBlocks,
      insertRejects: this.insertRejects,
      freedBytes: this.freedBytesTotal,
    };
  }

  private makeRoom(bytes: number): boolean {
    if (bytes > this.bytesMax) return false;
    let needed = this.bytesUsed + bytes - this.bytesMax;
    if (needed <= 0) return true;
    const victims: RamBlock[] = [];
    for (const block of this.blocks.values()) {
      if (block.refs > 0 || this.isPinned(block.keyHex)) continue;
      victims.push(block);
      needed -= block.bytes;
      if (needed <= 0) break;
    }
    if (needed > 0) return false;
    for (const block of victims) {
      this.evictions++;
      this.drop(block, true);
    }
    return true;
  }

  private drop(block: RamBlock, evicted = false): void {
    this.blocks.delete(block.keyHex);
    this.bytesUsed -= block.bytes;
    this.freedBytesTotal += block.bytes;
    this.freedBytesUntaken += block.bytes;
    this.onDrop(block.keyHex, evicted);
  }
}
