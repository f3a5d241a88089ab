import { KvparkError } from "../errors";

/**
 * Stable reasons for a block-level failure, named after the proto enum BlockErrorCode
 * (kvpark.v1, without its BLOCK_ERROR_CODE_ prefix), so the RPC layer maps them one to one.
 */
export const BLOCK_ERROR_CODES = [
  "NOT_FOUND",
  "CORRUPT",
  "UNSUPPORTED_VERSION",
  "MODEL_MISMATCH",
  "KEY_MISMATCH",
  "SHAPE_MISMATCH",
  "INVALID_PAYLOAD",
  "PARENT_MISSING",
  "CAPACITY",
] as const;

/** One of BLOCK_ERROR_CODES. */
export type BlockErrorCode = (typeof BLOCK_ERROR_CODES)[number];

/** Why one block was not served, stored or restored: a stable code and a message for people. */
export class BlockError extends KvparkError<BlockErrorCode> {
  constructor(code: BlockErrorCode, message: string) {
    super(code, message);
    this.name = "BlockError";
  }
}

/**
 * A block the store could not read just now (an I/O error, the store closing): not served or
 * restored this time, but kept, since nothing says its bytes are damaged.
 */
export class StoreReadError extends BlockError {
  constructor(readonly storeCode: string) {
    super("NOT_FOUND", `the SSD store could not read the block now (${storeCode})`);
    this.name = "StoreReadError";
  }
}
