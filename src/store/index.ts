/**
 * The SSD block store: the only way the rest of kvpark reaches the native addon.
 * See native/FORMAT.md for the on-disk layout and docs/STORE.md for the design.
 */
import { SsdBlockStore } from "./native";
import type { BlockStore, StoreOptions } from "./types";

export { StoreError, STORE_ERROR_CODES, isStoreErrorCode } from "./errors";
export type { StoreErrorCode } from "./errors";
export { SsdBlockStore, storeFormatVersion } from "./native";
export { KEY_BYTES } from "./types";
export type {
  BlockStore,
  DeleteResult,
  GetResult,
  PinKind,
  PinResult,
  PutEntry,
  PutResult,
  StoreOptions,
  StoreStats,
} from "./types";

/** Opens the store in `dir` (created if missing); only one process may hold it. */
export function openStore(dir: string, options: StoreOptions): Promise<BlockStore> {
  return SsdBlockStore.open(dir, options);
}
