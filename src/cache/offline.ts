import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { optionRange } from "../config";
import { KvparkError } from "../errors";
import { openStore, type BlockStore } from "../store";
import { parseSafetensors, SafetensorsError } from "../util/safetensors";
import type { LayerType } from "../model/config";
import { openEnvelope, toRecord, type ModelShape } from "./block-codec";
import { parseBlockPayload, verifyRecord } from "./block-verify";
import { ChainLog } from "./chain-log";
import { BlockError } from "./errors";
import { PrefixCache } from "./prefix-cache";

// What `kvpark cache verify --data-dir` and `kvpark cache export --data-dir` do with the SSD tier
// of a server that is not running: the store is opened as the server opens it (which takes its
// LOCK, so a running server's store is refused with KV_LOCKED), read, and closed.

/** The SSD tier's directory in a server's data directory (`kvpark serve --data-dir`). */
export function ssdDirOf(dataDir: string): string {
  return path.join(dataDir, "cache");
}

// A cap no store reaches: an offline open writes nothing, so the cap must never evict.
const BYTES_MAX_UNBOUNDED = () => optionRange("ssdBytesMax").max;
const VERIFY_BATCH_BLOCKS = 32;
// verifyRecord checks a block's token count against the block size; offline, any count up to this passes.
const TOKENS_PER_BLOCK_ANY = 1 << 16;

async function openExisting(ssdDir: string): Promise<BlockStore> {
  const dir = path.join(ssdDir, "blocks");
  if (!fs.existsSync(dir)) throw new KvparkError("NOT_FOUND", `${dir} holds no SSD store`);
  return openStore(dir, { bytesMax: BYTES_MAX_UNBOUNDED(), fsync: "none" });
}

/** A damaged block: its key (hex) and why. */
export interface DamagedBlock {
  key: string;
  reason: string;
}

/** What verifyStore() found. */
export interface StoreVerifyReport {
  /** Blocks the store holds (indexed when it opened). */
  blocks: number;
  /** Of those, blocks that passed every check. */
  intact: number;
  /** Of those, blocks that failed one, with the reason. */
  damaged: DamagedBlock[];
  /** Damaged records the store skipped while opening: their blocks are lost. */
  lostAtOpen: number;
  /** Segment files set aside (now or at an earlier open) because their header was damaged. */
  quarantinedSegments: number;
  /** What the store's open reported (quarantined segments, damaged records, a rebuilt index). */
  storeWarnings: string[];
  /** Damage to the chain log, which costs no block (the next server open reads those blocks back). */
  chainLogNotes: string[];
  /** Fingerprints of the models whose blocks the store holds. */
  models: string[];
}

/**
 * Checks every block of a stopped server's SSD tier (`ssdDir`, `<data-dir>/cache`): the store's
 * checksum over each record, the envelope, the payload's structure and metadata, the shape the
 * metadata states, finite values, and the key recomputed from the parent (the envelope's root for a
 * first block) and the token ids. Needs no model: each block describes itself. Like a server, the
 * store forgets a record that fails its checksum once it has been read, so a second run no longer
 * lists it (the server would have dropped it at its first read). Throws KV_LOCKED while a server
 * holds the store.
 */
export async function verifyStore(ssdDir: string): Promise<StoreVerifyReport> {
  const store = await openExisting(ssdDir);
  const report: StoreVerifyReport = {
    blocks: 0,
    intact: 0,
    damaged: [],
    lostAtOpen: 0,
    quarantinedSegments: 0,
    storeWarnings: [],
    chainLogNotes: [],
    models: [],
  };
  const models = new Set<string>();
  try {
    const opened = store.stats();
    report.storeWarnings = [...opened.openWarnings];
    report.lostAtOpen = opened.badRecords;
    report.quarantinedSegments = opened.quarantinedSegments;
    const keys: Buffer[] = [];
    for await (const key of store.keys()) keys.push(key);
    report.blocks = keys.length;
    for (let i = 0; i < keys.length; i += VERIFY_BATCH_BLOCKS) {
      const batch = keys.slice(i, i + VERIFY_BATCH_BLOCKS);
      const read = await store.getMany(batch);
      batch.forEach((key, j) => {
        const result = read[j];
        const reason =
          typeof result === "string" ? storeReason(result) : checkStoredBlock(key, result, models);
        if (reason === null) report.intact++;
        else report.damaged.push({ key: key.toString("hex"), reason });
      });
    }
  } finally {
    await store.close();
  }
  report.models = [...models].sort();
  const log = path.join(ssdDir, "chain.log");
  if (fs.existsSync(log)) {
    const contents = ChainLog.read(log);
    if (contents === null)
      report.chainLogNotes.push("chain.log has no chain log header (a server reads every block back)");
    else if (contents.damagedRanges > 0 || contents.tornBytes > 0)
      report.chainLogNotes.push(
        `chain.log: ${contents.damagedRanges} damaged stretch(es) of ${contents.skippedBytes} bytes and ${contents.tornBytes} torn bytes at its end (a server reads those blocks back)`,
      );
  }
  return report;
}

function storeReason(code: string): string {
  return code === "KV_CORRUPT"
    ? "KV_CORRUPT: the record does not match its checksum (the store no longer serves it)"
    : `${code}: the store could not read the block`;
}

/** Why a stored block is damaged, or null when it passes every check. */
function checkStoredBlock(key: Buffer, stored: Buffer, models: Set<string>): string | null {
  try {
    const { root, payload } = openEnvelope(stored);
    const model = modelOf(payload);
    const parsed = parseBlockPayload(payload, model);
    if (!parsed.header.key.equals(key))
      return "CORRUPT: the block's metadata names another key than the store's";
    verifyRecord(toRecord(parsed.header, payload), { model, blockTokens: TOKENS_PER_BLOCK_ANY, root });
    models.add(model.fingerprint);
    return null;
  } catch (err) {
    if (err instanceof BlockError) return `${err.code}: ${err.message}`;
    throw err;
  }
}

/** The model shape a payload's metadata states, for checking the payload against itself. */
function modelOf(payload: Buffer): ModelShape {
  let meta: Record<string, string>;
  try {
    meta = parseSafetensors(payload).metadata;
  } catch (err) {
    if (err instanceof SafetensorsError) throw new BlockError("INVALID_PAYLOAD", `payload: ${err.message}`);
    throw err;
  }
  let shape: unknown;
  try {
    shape = JSON.parse(meta.shape ?? "");
  } catch {
    shape = null;
  }
  const layers = Number(meta.layer_count);
  if (!Array.isArray(shape) || shape.length !== 3 || !Number.isSafeInteger(layers) || layers < 1) {
    throw new BlockError("INVALID_PAYLOAD", "metadata layer_count or shape is not readable");
  }
  const [kvHeads, , headDim] = shape as number[];
  if (![kvHeads, headDim].every((n) => Number.isSafeInteger(n) && n >= 1)) {
    throw new BlockError("INVALID_PAYLOAD", "metadata shape is not a list of counts");
  }
  const model: ModelShape = {
    fingerprint: String(meta.model_fingerprint ?? ""),
    numLayers: layers,
    kvHeads,
    headDim,
  };
  if (meta.layer_kinds === undefined) return model;
  // Format version 2 describes its layers; parseBlockPayload checks these against the tensors.
  try {
    const kinds: unknown = JSON.parse(meta.layer_kinds);
    const conv: unknown = JSON.parse(meta.snapshot_conv_shape ?? "");
    const delta: unknown = JSON.parse(meta.snapshot_delta_shape ?? "");
    if (!Array.isArray(kinds) || !Array.isArray(conv) || !Array.isArray(delta)) throw new Error("not lists");
    return {
      ...model,
      layerTypes: kinds as LayerType[],
      recurrentShape: { conv: conv as number[], delta: delta as number[] },
    };
  } catch {
    throw new BlockError("INVALID_PAYLOAD", "metadata layer_kinds or snapshot shapes are not readable");
  }
}

/**
 * Opens a stopped server's SSD tier as a prefix cache for reading (an export): the model is the one
 * its first block states, `blockTokens` the server's --block-tokens. Throws KV_LOCKED while a server
 * holds the store, NOT_FOUND when there is no store or it holds no block. The open does what a
 * server's open does to the side files (the chain log and pin journal may be rewritten), no more.
 */
export async function openOffline(
  ssdDir: string,
  blockTokens: number,
  seams: { log?: (line: string) => void } = {},
): Promise<PrefixCache> {
  const store = await openExisting(ssdDir);
  let model: ModelShape | undefined;
  try {
    for await (const key of store.keys()) {
      const [stored] = await store.getMany([key]);
      if (typeof stored === "string") continue;
      try {
        model = modelOf(openEnvelope(stored).payload);
        break;
      } catch (err) {
        if (!(err instanceof BlockError)) throw err;
      }
    }
  } finally {
    await store.close();
  }
  if (!model) throw new KvparkError("NOT_FOUND", `the SSD store in ${ssdDir} holds no readable block`);
  return PrefixCache.open(
    model,
    {
      ssdDir,
      blockTokens,
      ssdFsync: "none",
      ssdBytesMax: BYTES_MAX_UNBOUNDED(),
      stagingDir: fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-offline-")),
    },
    seams,
  );
}
