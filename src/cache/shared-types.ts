import type { KVBlockRecord } from "./block-codec";
import type { AdmissionPolicy } from "./config";
import type { SharedStats } from "./reports";
import type { LayerBlock } from "../model/kv-cache";

/** Where and how the shared tier reaches Redis, and its limits (CacheOptions.shared). */
export interface SharedTierOptions {
  /** redis:// or rediss:// addresses; several (or `cluster`) make them seeds of a Redis Cluster. */
  urls: string[];
  cluster: boolean;
  /** Budget of a lookup's round trips, and of each restore batch's reads. */
  timeoutMs: number;
  /** Time to live of a written block (0: none; Redis evicts under maxmemory). */
  ttlSeconds: number;
  /** Which blocks are written: all, reused (seen twice), pinned. */
  admission: AdmissionPolicy;
  /** Blocks waiting to be written; a block finding the queue full is skipped and counted. */
  writeQueueBlocksMax: number;
  writeQueueBytesMax: number;
  /** Bytes of KV read and loaded per restore batch. */
  restoreBatchBytesMax: number;
  /** Prefix of every key the tier writes (several clusters of nodes may share one Redis). */
  keyPrefix: string;
}

/** A block the shared tier holds that continues a lookup's chain. */
export interface SharedLink {
  key: Buffer;
  parent: Buffer;
  /** The block's token ids (the prompt's, or for a partly matched block the chain metadata's). */
  tokenIds: number[];
  /** Leading tokens of the block the prompt matches. */
  tokens: number;
}

/** A block waiting to be written; the tier's encoder makes its record when the pump takes it. */
export interface SharedWrite {
  keyHex: string;
  key: Buffer;
  /** The previous block's key, or the tenant's root for a chain's first block. */
  parent: Buffer;
  root: Buffer;
  tokenIds: Uint32Array;
  /** Bytes of its KV, what the queue's byte limit counts. */
  bytes: number;
  layers: LayerBlock[];
  /** Written within the pump's next turn (see PersistOptions.keepPace and WriteQueue.turnBytes). */
  keepPace?: boolean;
  done: (ok: boolean) => void;
}

/** Encodes a batch of blocks (MLX arrays to wire records) on the engine's thread. */
export type SharedEncoder = (items: readonly SharedWrite[]) => KVBlockRecord[];

/** The shared tier's counters, for Stats and metrics: its SharedStats less what is read live. */
export type SharedTierCounters = Omit<SharedStats, "connected" | "writeQueueDepth" | "writeQueueBytes">;
