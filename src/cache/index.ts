/**
 * The prefix cache: block identity (block-key), the block format shared by SSD and wire
 * (block-codec), the RAM block pool (ram-tier), the SSD tier over the native store (ssd-tier)
 * and the policy that ties them together (prefix-cache, a facade over block-index, restore,
 * persist, transfer and pins; its types are in reports). See src/cache/README.md.
 */
export {
  BLOCK_KEY_BYTES,
  KV_LAYOUT_VERSION,
  KV_LAYOUT_VERSION_RECURRENT,
  blockKey,
  chainKeys,
  rootKey,
} from "./block-key";
export type { BlockKey, ChainLink } from "./block-key";
export { BLOCK_DTYPE, BLOCK_FORMAT_VERSION, BLOCK_FORMAT_VERSION_V1, snapshotBytes } from "./block-codec";
export type { BlockHeader, KVBlockInput, KVBlockRecord, ModelShape } from "./block-codec";
export { verifyRecord } from "./block-verify";
export { CACHE_DEFAULTS, cacheOptionsFrom, resolveCacheOptions, sharedOptionsFrom } from "./config";
export type { AdmissionPolicy, CacheOptions } from "./config";
export { BLOCK_ERROR_CODES, BlockError } from "./errors";
export type { BlockErrorCode } from "./errors";
export { PrefixCache } from "./prefix-cache";
export { SharedTier } from "./shared-tier";
export type { SharedTierOptions } from "./shared-types";
export { BUNDLE_FORMAT_VERSION, BundleError, BundleReader, BundleWriter } from "./bundle";
export type { BundleEntry } from "./bundle";
export { LIST_PAGE_BLOCKS_MAX } from "./maintenance";
export type { FileIo } from "./file-io";
export type {
  BlockListing,
  BlockRejection,
  BlockSelector,
  CacheSeams,
  CacheStats,
  ClearReport,
  EvictReport,
  EvictTier,
  ExportReport,
  GetBlockResult,
  ImportReport,
  ListScope,
  ListedBlock,
  LookupOptions,
  MatchedBlock,
  MatchTier,
  PersistOptions,
  PersistReport,
  PinReport,
  PinRequestKind,
  PinState,
  PrefixMatch,
  PutBlocksReport,
  RestoreReport,
  RestoreStages,
  SequenceKV,
  SharedStats,
  Tier,
  TierStats,
} from "./reports";
