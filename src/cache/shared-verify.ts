import type { KVBlockRecord, ModelShape, ParsedBlock } from "./block-codec";
import { payloadDigest, verifyRecord } from "./block-verify";
import { BlockError } from "./errors";
import type { MatchedBlock, RestoreReport } from "./reports";
import { SharedTier } from "./shared-tier";

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

/**
 * Checks a batch of values the shared tier read for `batch`'s blocks, in order, up to the first
 * that fails: a value gone since the lookup (evicted, expired), not read in time or at all (counted
 * by the tier), or failing verifySharedBlock (refused: counted, deleted from Redis). The match ends
 * there and the rest is prefilled. Returns the blocks checked before it, and whether one failed.
 */
export async function checkSharedBatch<Step extends { block: MatchedBlock }>(
  shared: SharedTier,
  batch: readonly Step[],
  values: readonly (Buffer | null | Error)[],
  root: Buffer,
  model: ModelShape,
  blockTokens: number,
  report: RestoreReport,
  onCorrupt: () => void,
): Promise<{ valid: { step: Step; block: ParsedBlock }[]; failed: boolean }> {
  const records = values.map((v) => (Buffer.isBuffer(v) ? SharedTier.decode(v) : null));
  // The payloads' SHA-256 run on the thread pool while this loop checks the blocks before them
  // (and the next batch's reply arrives); a digest that cannot run is computed inline.
  const digests = records.map((r) =>
    r ? payloadDigest(r.payload).catch(() => undefined) : Promise.resolve(undefined),
  );
  const valid: { step: Step; block: ParsedBlock }[] = [];
  for (let j = 0; j < batch.length; j++) {
    const value = values[j];
    if (value instanceof Error || !value) {
      if (!value) shared.counters.lostBlocks++;
      return { valid, failed: true };
    }
    report.sharedBytes += value.length;
    const checked = verifySharedBlock(records[j], batch[j].block, root, model, blockTokens, await digests[j]);
    if (checked instanceof BlockError) {
      shared.refuse(batch[j].block.key);
      onCorrupt();
      report.corruptBlocks++;
      return { valid, failed: true };
    }
    valid.push({ step: batch[j], block: checked });
  }
  return { valid, failed: false };
}
