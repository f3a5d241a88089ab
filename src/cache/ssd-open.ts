import type { BlockStore } from "../store";
import { parseSafetensors } from "../util/safetensors";
import { openEnvelope } from "./block-codec";
import { blockKey } from "./block-key";
import { ChainLog, type ChainLogContents, type ChainRecord } from "./chain-log";
import type { FileIo } from "./file-io";
import type { WriteErrors } from "./write-errors";

/** What opening the SSD tier's index found and did. */
export interface IndexOpenReport {
  /** Where the index came from: the chain log (and the store for what it lacked), or the store alone. */
  source: "log" | "scan" | "empty";
  /** Blocks indexed from the chain log. */
  fromLog: number;
  /** Blocks read back from the store because the log did not describe them (or not verifiably). */
  readBack: number;
  /** Log records dropped because the store does not hold their block. */
  logDropped: number;
  /** Damaged stretches of the log skipped, their bytes, and the bytes of a torn tail. */
  damagedRanges: number;
  skippedBytes: number;
  tornBytes: number;
  /** Stored blocks that could not be read as a block (envelope, metadata) and were deleted. */
  scanDropped: number;
  /** Stored blocks the store could not read now (I/O errors): kept, not indexed until the next open. */
  unreadable: number;
}

// Blocks read per getMany while reading blocks back from the store.
const SCAN_BATCH_BLOCKS = 64;

/**
 * The chain index of the blocks `store` holds, with the store's records as the truth and the
 * chain log as a cache of them: log records of blocks the store lacks are dropped; records found
 * after damage in the log are used only when they verify (the key recomputed from parent and
 * tokens, the root shared with the parent's); every stored block the log does not describe is
 * read back from the store. Then the log is rewritten from the result, unless it already says
 * exactly that. The log is never used to delete a block from the store.
 */
export async function openIndex(
  store: BlockStore,
  logFile: string,
  fingerprint: string,
  layoutVersion: number | undefined,
  io: FileIo,
  errors: WriteErrors,
): Promise<{ records: ChainRecord[]; log: ChainLog | null; report: IndexOpenReport }> {
  const stored = new Set<string>();
  for await (const key of store.keys()) stored.add(key.toString("hex"));
  let contents: ChainLogContents | null = null;
  try {
    contents = ChainLog.read(
      logFile,
      io,
      (r, afterDamage) =>
        !afterDamage || blockKey(r.parent, r.tokenIds, fingerprint, layoutVersion).equals(r.key),
    );
  } catch (err) {
    errors.report(
      `chain.log could not be read (${(err as Error).message}); reading every block from the store`,
    );
  }
  const report: IndexOpenReport = {
    source: "empty",
    fromLog: 0,
    readBack: 0,
    logDropped: 0,
    damagedRanges: contents?.damagedRanges ?? 0,
    skippedBytes: contents?.skippedBytes ?? 0,
    tornBytes: contents?.tornBytes ?? 0,
    scanDropped: 0,
    unreadable: 0,
  };
  const byKey = new Map<string, { record: ChainRecord; suspect: boolean }>();
  contents?.records.forEach((record, i) => {
    byKey.set(record.key.toString("hex"), { record, suspect: i >= contents!.firstAfterDamage });
  });
  for (const keyHex of byKey.keys()) {
    if (!stored.has(keyHex)) {
      byKey.delete(keyHex);
      report.logDropped++;
    }
  }
  // Read back what the log lacks, then what it holds unverifiably (whose parent may be among the first).
  const tried = new Set<string>();
  const readBackMissing = async () => {
    const missing = [...stored].filter((keyHex) => !byKey.has(keyHex) && !tried.has(keyHex));
    for (const keyHex of missing) tried.add(keyHex);
    for (const record of await readBack(store, missing, report))
      byKey.set(record.key.toString("hex"), { record, suspect: false });
    return missing.length;
  };
  let missing = await readBackMissing();
  if (dropUnverifiedRoots(byKey) > 0) missing += await readBackMissing();
  report.fromLog = byKey.size - report.readBack;
  const records = [...byKey.values()].map((e) => e.record);
  report.source = contents ? "log" : records.length > 0 ? "scan" : "empty";
  const clean =
    contents !== null &&
    contents.records.length === byKey.size &&
    report.logDropped + report.damagedRanges + report.tornBytes + missing === 0;
  if (!contents && report.readBack > 0) {
    errors.report(`chain.log missing or unreadable: ${report.readBack} blocks read back from the store`);
  } else if (contents && report.damagedRanges + report.tornBytes + report.readBack > 0) {
    errors.report(
      `chain.log: ${report.damagedRanges} damaged stretches (${report.skippedBytes} bytes) and a torn tail of ` +
        `${report.tornBytes} bytes skipped; ${report.readBack} blocks read back from the store`,
    );
  }
  const log = clean
    ? reopenLog(logFile, contents!, io, errors)
    : rewriteLog(logFile, records, contents, io, errors);
  return { records, log, report };
}

/**
 * Drops records found after damage whose root is not verified: a first block's root is its parent
 * (which the key covers); any other's must be its parent's, up to a trusted or first block.
 */
function dropUnverifiedRoots(byKey: Map<string, { record: ChainRecord; suspect: boolean }>): number {
  const verdict = new Map<string, boolean>();
  const verify = (start: string): boolean => {
    const path: string[] = [];
    let keyHex = start;
    let ok = false;
    for (;;) {
      const known = verdict.get(keyHex);
      if (known !== undefined) {
        ok = known;
        break;
      }
      const entry = byKey.get(keyHex);
      if (!entry || path.includes(keyHex)) break;
      path.push(keyHex);
      const { record } = entry;
      if (!entry.suspect || record.parent.equals(record.root)) {
        ok = true;
        break;
      }
      const parentHex = record.parent.toString("hex");
      if (!byKey.get(parentHex)?.record.root.equals(record.root)) break;
      keyHex = parentHex;
    }
    for (const k of path) verdict.set(k, ok);
    return ok;
  };
  let dropped = 0;
  for (const [keyHex, entry] of byKey) {
    if (entry.suspect && !verify(keyHex)) {
      byKey.delete(keyHex);
      dropped++;
    }
  }
  return dropped;
}

/** Reads blocks back from the store; one that is not a readable block is deleted. */
async function readBack(
  store: BlockStore,
  keysHex: readonly string[],
  report: IndexOpenReport,
): Promise<ChainRecord[]> {
  const records: ChainRecord[] = [];
  for (let i = 0; i < keysHex.length; i += SCAN_BATCH_BLOCKS) {
    const batch = keysHex.slice(i, i + SCAN_BATCH_BLOCKS).map((k) => Buffer.from(k, "hex"));
    const results = await store.getMany(batch);
    for (let j = 0; j < batch.length; j++) {
      const result = results[j];
      if (typeof result === "string") {
        // KV_CORRUPT: the store has dropped it itself; KV_NOT_FOUND: gone since; else kept for later.
        if (result === "KV_CORRUPT") report.scanDropped++;
        else if (result !== "KV_NOT_FOUND") report.unreadable++;
        continue;
      }
      const record = recordFromStored(batch[j], result);
      if (record) {
        records.push(record);
        report.readBack++;
      } else {
        report.scanDropped++;
        await store.delete(batch[j]);
      }
    }
  }
  return records;
}

/** A block's chain record from its stored bytes: the envelope's root, the metadata's key, parent and tokens. */
export function recordFromStored(key: Buffer, stored: Buffer): ChainRecord | null {
  try {
    const { root, payload } = openEnvelope(stored);
    const meta = parseSafetensors(payload).metadata;
    if (meta.key !== key.toString("hex")) return null;
    const tokenIds = JSON.parse(meta.token_ids) as number[];
    if (!Array.isArray(tokenIds) || tokenIds.length === 0) return null;
    const parent = meta.parent_key === "" ? Buffer.from(root) : Buffer.from(meta.parent_key, "hex");
    if (parent.length !== 32) return null;
    return {
      key,
      parent,
      root: Buffer.from(root),
      tokenIds: Uint32Array.from(tokenIds),
      storedBytes: stored.length,
    };
  } catch {
    return null;
  }
}

/** The log as it is, open for appending after its last good record. */
function reopenLog(
  file: string,
  contents: ChainLogContents,
  io: FileIo,
  errors: WriteErrors,
): ChainLog | null {
  try {
    return ChainLog.reopen(file, contents.fileBytes - contents.tornBytes, contents.records.length, io);
  } catch (err) {
    errors.addError(err, 1, "chain.log open");
    return null;
  }
}

/** The log rewritten from the index; when that fails, the old one as it is, or none. */
function rewriteLog(
  file: string,
  records: readonly ChainRecord[],
  contents: ChainLogContents | null,
  io: FileIo,
  errors: WriteErrors,
): ChainLog | null {
  try {
    return ChainLog.rewrite(file, records, io);
  } catch (err) {
    // The old log stays (the rewrite is atomic): appending to it keeps it a cache of the store,
    // read back where it falls short at the next open.
    errors.addError(err, 1, "chain.log rewrite");
    return contents ? reopenLog(file, contents, io, errors) : null;
  }
}
