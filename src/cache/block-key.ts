import * as crypto from "node:crypto";

/**
 * Version of the meaning of a block's bytes: keys after rotary embedding, float32,
 * [kvHeads, tokens, headDim] per layer. It is hashed into every key, so changing how KV is
 * computed or laid out changes every key and old blocks are never mistaken for new ones.
 */
export const KV_LAYOUT_VERSION = 1;

/**
 * The layout version of models with recurrent layers (qwen3_5): their blocks (format version 2)
 * hold keys and values of the attention layers only and, for each recurrent layer, its state after
 * the block's last token. Hashed in place of KV_LAYOUT_VERSION for those models only, so the keys
 * of models without recurrent layers are unchanged.
 */
export const KV_LAYOUT_VERSION_RECURRENT = 2;

/** Bytes in a block key. */
export const BLOCK_KEY_BYTES = 32;

/** A block key: SHA-256 of the block's parent key, token ids, model fingerprint and layout version. */
export type BlockKey = Buffer;

// Domain tags keep a root and a block from ever hashing the same bytes.
const ROOT_TAG = Buffer.from("kvpark-root", "utf8");
const BLOCK_TAG = Buffer.from("kvpark-block", "utf8");

function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value, 0);
  return b;
}

// Each field is preceded by its byte length, so no two field sequences share an encoding.
function updateFramed(hash: crypto.Hash, field: Buffer | Uint8Array): void {
  hash.update(u32(field.byteLength));
  hash.update(field);
}

/**
 * The key every chain of a tenant and model starts from. The tenant enters here and only here:
 * every block key depends on it through the chain, so two tenants never share a block.
 */
export function rootKey(tenant: string, fingerprint: string, layout = KV_LAYOUT_VERSION): BlockKey {
  if (typeof tenant !== "string") throw new TypeError("tenant must be a string");
  if (typeof fingerprint !== "string" || fingerprint === "")
    throw new TypeError("fingerprint must be a non-empty string");
  const hash = crypto.createHash("sha256");
  updateFramed(hash, ROOT_TAG);
  updateFramed(hash, Buffer.from(tenant, "utf8"));
  updateFramed(hash, Buffer.from(fingerprint, "utf8"));
  updateFramed(hash, u32(layout));
  return hash.digest();
}

/** Little-endian uint32 encoding of token ids, as hashed and as written in block headers. */
export function encodeTokenIds(tokenIds: ArrayLike<number>): Buffer {
  const out = Buffer.allocUnsafe(tokenIds.length * 4);
  for (let i = 0; i < tokenIds.length; i++) {
    const id = tokenIds[i];
    if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) {
      throw new RangeError(`token id ${id} at ${i} is not a uint32`);
    }
    out.writeUInt32LE(id, i * 4);
  }
  return out;
}

/** The key of the block holding `tokenIds` right after the block (or root) `parent`. */
export function blockKey(
  parent: BlockKey,
  tokenIds: ArrayLike<number>,
  fingerprint: string,
  layout = KV_LAYOUT_VERSION,
): BlockKey {
  if (!Buffer.isBuffer(parent) || parent.length !== BLOCK_KEY_BYTES) {
    throw new TypeError(`parent must be a ${BLOCK_KEY_BYTES}-byte Buffer`);
  }
  if (tokenIds.length === 0) throw new RangeError("a block holds at least one token");
  const hash = crypto.createHash("sha256");
  updateFramed(hash, BLOCK_TAG);
  updateFramed(hash, parent);
  updateFramed(hash, encodeTokenIds(tokenIds));
  updateFramed(hash, Buffer.from(fingerprint, "utf8"));
  updateFramed(hash, u32(layout));
  return hash.digest();
}

/** One block of a token sequence: its key, its parent's key and the token range it covers. */
export interface ChainLink {
  key: BlockKey;
  parent: BlockKey;
  /** Index of the block's first token in the sequence. */
  start: number;
  /** One past its last token. */
  end: number;
}

/**
 * Keys of the blocks covering tokens[0, end): full blocks of `blockTokens`, then one shorter
 * block for the remainder, if any. `end` defaults to the whole sequence.
 */
export function chainKeys(
  root: BlockKey,
  tokens: ArrayLike<number>,
  blockTokens: number,
  fingerprint: string,
  end: number = tokens.length,
  layout = KV_LAYOUT_VERSION,
): ChainLink[] {
  if (!Number.isInteger(blockTokens) || blockTokens < 1) throw new RangeError("blockTokens must be >= 1");
  if (!Number.isInteger(end) || end < 0 || end > tokens.length) {
    throw new RangeError(`end ${end} outside [0, ${tokens.length}]`);
  }
  const links: ChainLink[] = [];
  let parent = root;
  for (let start = 0; start < end; start += blockTokens) {
    const stop = Math.min(start + blockTokens, end);
    const key = blockKey(parent, sliceTokens(tokens, start, stop), fingerprint, layout);
    links.push({ key, parent, start, end: stop });
    parent = key;
  }
  return links;
}

function sliceTokens(tokens: ArrayLike<number>, start: number, end: number): ArrayLike<number> {
  if (Array.isArray(tokens)) return tokens.slice(start, end);
  if (ArrayBuffer.isView(tokens)) return (tokens as unknown as Uint32Array).subarray(start, end);
  return Array.prototype.slice.call(tokens, start, end) as number[];
}
