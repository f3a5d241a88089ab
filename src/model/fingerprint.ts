import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

/**
 * The model fingerprint: what a KV block was computed with. It covers config.json, the content of
 * every weight file and the tokenizer files, so blocks never cross models, model versions or
 * tokenizations.
 *
 * Layout of the hashed stream (version 1): the tag "kvpark-model-fingerprint-v1", then per part a
 * frame of (label, payload), each as an 8-byte big-endian length followed by the bytes:
 *   "config.json"            -> file bytes
 *   "weight:<file name>"     -> 8-byte big-endian file size + SHA-256 of the file (32 bytes),
 *                               weight files in name order
 *   "tokenizer.json"         -> file bytes, or the frame is left out when the file is absent
 *   "tokenizer_config.json"  -> file bytes, or left out when absent
 * Framing makes the encoding unambiguous: no two different sets of inputs hash the same stream.
 */
export const FINGERPRINT_VERSION_TAG = "kvpark-model-fingerprint-v1";

/** Read size when hashing weight files. */
const HASH_CHUNK_BYTES = 4 * 1024 * 1024;

/** A weight file's digest as remembered between runs: valid while size and mtime match. */
interface CachedDigest {
  size: number;
  mtimeMs: number;
  sha256: string;
}

/** Digests already computed in this process, keyed by absolute path. */
const digestsInProcess = new Map<string, CachedDigest>();

/**
 * Computes the fingerprint (lowercase hex SHA-256) of the model in `dir`. Weight files are hashed
 * as streams; their digests are reused while (path, size, mtime) are unchanged, within the process
 * and, given `cacheFile`, across processes.
 */
export async function modelFingerprint(
  dir: string,
  weightFileNames: string[],
  cacheFile?: string,
): Promise<string> {
  const persisted = cacheFile ? readDigestCache(cacheFile) : {};
  const hash = createHash("sha256");
  const frame = (label: string, payload: Buffer): void => {
    for (const part of [Buffer.from(label, "utf8"), payload]) {
      const length = Buffer.alloc(8);
      length.writeBigUInt64BE(BigInt(part.length));
      hash.update(length);
      hash.update(part);
    }
  };
  hash.update(FINGERPRINT_VERSION_TAG);
  frame("config.json", fs.readFileSync(path.join(dir, "config.json")));
  let persistedChanged = false;
  for (const name of [...weightFileNames].sort()) {
    const file = path.resolve(dir, name);
    const stat = fs.statSync(file);
    const remembered = digestsInProcess.get(file) ?? persisted[file];
    let sha256: string;
    if (remembered && remembered.size === stat.size && remembered.mtimeMs === stat.mtimeMs) {
      sha256 = remembered.sha256;
    } else {
      sha256 = await fileSha256(file);
      persisted[file] = { size: stat.size, mtimeMs: stat.mtimeMs, sha256 };
      persistedChanged = true;
    }
    digestsInProcess.set(file, { size: stat.size, mtimeMs: stat.mtimeMs, sha256 });
    const size = Buffer.alloc(8);
    size.writeBigUInt64BE(BigInt(stat.size));
    frame(`weight:${name}`, Buffer.concat([size, Buffer.from(sha256, "hex")]));
  }
  for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
    const file = path.join(dir, name);
    if (fs.existsSync(file)) frame(name, fs.readFileSync(file));
  }
  if (cacheFile && persistedChanged) writeDigestCache(cacheFile, persisted);
  return hash.digest("hex");
}

/** SHA-256 of a file's content, read as a stream so memory stays flat for multi-GB files. */
export async function fileSha256(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of fs.createReadStream(file, { highWaterMark: HASH_CHUNK_BYTES })) {
    hash.update(chunk as Buffer);
  }
  return hash.digest("hex");
}

function readDigestCache(cacheFile: string): Record<string, CachedDigest> {
  try {
    const value = JSON.parse(fs.readFileSync(cacheFile, "utf8"));
    return typeof value === "object" && value !== null ? value : {};
  } catch {
    // A missing or damaged cache only costs rehashing.
    return {};
  }
}

function writeDigestCache(cacheFile: string, digests: Record<string, CachedDigest>): void {
  try {
    fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
    const tmp = `${cacheFile}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(digests, null, 2) + "\n");
    fs.renameSync(tmp, cacheFile);
  } catch {
    // Failing to remember digests is not worth failing a model load over.
  }
}
