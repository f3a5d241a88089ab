import { verifyRecord, type KVBlockRecord, type ModelShape, type ParsedBlock } from "./block-codec";
import { BlockError } from "./errors";
import type { MatchedBlock } from "./reports";

/**
 * Checks a value read from the shared tier (decoded by SharedTier.decode: null when it is not a
 * KVBlock message) before anything of it reaches MLX: it must decode, pass everything PutBlocks checks (format, fingerprint, shapes, payload checksum,
 * metadata equal to the header, finite values, the key recomputed from parent key and token ids,
 * a first block's under this reader's tenant root), and be the very block the lookup named: same
 * key, same parent, same token ids. Redis is shared and may hold anything under a key (a damaged
 * or truncated value, another tenant's block, a forged one): a value is only data until it passed.
 */
export function verifySharedBlock(
  record: KVBlockRecord | null,
  block: MatchedBlock,
  root: Buffer,
  model: ModelShape,
  blockTokens: number,
  payloadDigest?: Buffer,
): ParsedBlock | BlockError {
  if (!record) return new BlockError("INVALID_PAYLOAD", "the shared tier's value is not a KVBlock message");
  let parsed: ParsedBlock;
  try {
    parsed = verifyRecord(record, { model, blockTokens, root, payloadDigest });
  } catch (err) {
    if (err instanceof BlockError) return err;
    throw err;
  }
  const expected = block.shared!;
  const parent = expected.parent.equals(root) ? Buffer.alloc(0) : expected.parent;
  if (!record.key.equals(block.key))
    return new BlockError("KEY_MISMATCH", "the value is another block than its key names");
  if (!record.parentKey.equals(parent))
    return new BlockError("KEY_MISMATCH", "the value's parent is not the block the lookup continued");
  const ids = expected.tokenIds;
  if (record.tokenIds.length !== ids.length || record.tokenIds.some((t, i) => t !== ids[i]))
    return new BlockError("KEY_MISMATCH", "the value's token ids are not those the lookup matched");
  return parsed;
}
