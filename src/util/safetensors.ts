/**
 * The safetensors container (https://huggingface.co/docs/safetensors): an 8-byte little-endian
 * header length, a JSON header naming each tensor's dtype, shape and byte range, then the raw
 * little-endian data. Written by hand because kvpark needs byte-level control: block payloads
 * are assembled from slices of other buffers and checked before MLX ever sees them (an MLX
 * exception on a malformed file would abort the engine).
 *
 * Two readers share the header checks: `parseSafetensors` for kvpark's own files (KV blocks, staged
 * arrays), strictly, and `readSafetensorsHeader` for model checkpoints, which reads only the header of
 * a file of any size and accepts every dtype a checkpoint may hold.
 */
import * as fs from "node:fs";
import { KvparkError } from "../errors";

/** Bytes per element of every safetensors dtype. */
export const DTYPE_BYTES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
} as const;

/** A safetensors dtype name. */
export type SafetensorsDtype = keyof typeof DTYPE_BYTES;

/** The dtypes kvpark's own files hold (written by `encodeHeader`, read by `parseSafetensors`). */
export type KvparkDtype = "F32" | "F16" | "BF16" | "I32" | "U32";

/** The dtypes `parseSafetensors` accepts; it refuses any other as unknown. */
export const KVPARK_DTYPES: ReadonlySet<string> = new Set<KvparkDtype>(["F32", "F16", "BF16", "I32", "U32"]);

/** Every dtype: what a model checkpoint may hold. */
const ALL_DTYPES: ReadonlySet<string> = new Set(Object.keys(DTYPE_BYTES));

/** One tensor's entry in a header. */
export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte range inside the data section (after the header). */
  begin: number;
  end: number;
}

/** A parsed file: metadata, tensors by name, and where the data section starts in the bytes. */
export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
  dataOffset: number;
}

/** A tensor to write: its bytes may be given in several pieces, concatenated in order. */
export interface TensorSpec {
  name: string;
  dtype: KvparkDtype;
  shape: number[];
  byteLength: number;
}

/** A file that is not well-formed safetensors; the message says what is wrong. */
export class SafetensorsError extends KvparkError<"SAFETENSORS_INVALID"> {
  constructor(message: string) {
    super("SAFETENSORS_INVALID", message);
    this.name = "SafetensorsError";
  }
}

/** Upper bound on a header: kvpark's block headers are a few KiB; a larger one is damage or abuse. */
export const HEADER_BYTES_MAX = 16 * 1024 * 1024;

/** Upper bound on a checkpoint's header, as in the safetensors reference implementation. */
export const CHECKPOINT_HEADER_BYTES_MAX = 100 * 1024 * 1024;

function elementCount(shape: number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/**
 * The length prefix and JSON header for `tensors` laid out back to back in the given order,
 * padded with spaces to a multiple of 8 bytes so the data section starts aligned (the padding
 * the reference implementation writes).
 */
export function encodeHeader(tensors: readonly TensorSpec[], metadata: Record<string, string>): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const bytes = elementCount(t.shape) * DTYPE_BYTES[t.dtype];
    if (bytes !== t.byteLength) {
      throw new RangeError(`tensor ${t.name}: shape [${t.shape}] needs ${bytes} bytes, got ${t.byteLength}`);
    }
    if (t.name === "__metadata__" || t.name in header)
      throw new RangeError(`duplicate tensor name ${t.name}`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const padded = Math.ceil((8 + json.length) / 8) * 8 - 8;
  const out = Buffer.alloc(8 + padded, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, 8);
  return out;
}

/** A whole file: header followed by each tensor's pieces. */
export function encodeSafetensors(
  tensors: readonly (TensorSpec & { data: readonly Uint8Array[] })[],
  metadata: Record<string, string>,
): Buffer {
  const header = encodeHeader(tensors, metadata);
  const pieces: Uint8Array[] = [header];
  for (const t of tensors) {
    const got = t.data.reduce((n, piece) => n + piece.byteLength, 0);
    if (got !== t.byteLength) throw new RangeError(`tensor ${t.name}: ${got} data bytes for ${t.byteLength}`);
    pieces.push(...t.data);
  }
  return Buffer.concat(pieces);
}

/**
 * Parses and checks a file: header within bounds, valid JSON, metadata of strings, known dtypes,
 * byte ranges that match their shapes and tile the data section exactly (no gaps, overlaps or
 * trailing bytes). Throws SafetensorsError.
 */
export function parseSafetensors(bytes: Uint8Array): SafetensorsFile {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dataOffset = 8 + checkHeaderLength(view, bytes.byteLength, HEADER_BYTES_MAX);
  const json = parseHeaderJson(view.toString("utf8", 8, dataOffset));
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, value] of Object.entries(json)) {
    if (name === "__metadata__") {
      // MLX writes null when there is no metadata.
      if (value === null) continue;
      if (typeof value !== "object" || Array.isArray(value)) {
        throw new SafetensorsError("__metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== "string") throw new SafetensorsError(`__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    tensors.set(name, parseTensorInfo(name, value, KVPARK_DTYPES));
  }
  const dataBytes = bytes.byteLength - dataOffset;
  const ranges = [...tensors.entries()].sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let covered = 0;
  for (const [name, info] of ranges) {
    if (info.begin !== covered) {
      throw new SafetensorsError(
        `tensor ${name} starts at ${info.begin}, expected ${covered} (gap or overlap)`,
      );
    }
    covered = info.end;
  }
  if (covered !== dataBytes) {
    throw new SafetensorsError(`tensors cover ${covered} data bytes of ${dataBytes}`);
  }
  return { metadata, tensors, dataOffset };
}

/**
 * Reads and checks the header of a model checkpoint without reading its data: header within bounds,
 * valid JSON, every tensor's dtype known, its byte range matching its shape and inside the file.
 * Unlike `parseSafetensors`, metadata is not checked and tensors need not tile the data section.
 * MLX reads tensor data lazily and a failed read during evaluation aborts the process, so a truncated
 * or inconsistent file has to be refused here, before MLX sees it. Throws SafetensorsError.
 */
export function readSafetensorsHeader(file: string): Map<string, TensorInfo> {
  const fd = fs.openSync(file, "r");
  try {
    const fileBytes = fs.fstatSync(fd).size;
    const lengthBytes = Buffer.alloc(8);
    fs.readSync(fd, lengthBytes, 0, 8, 0);
    const headerBytes = checkHeaderLength(lengthBytes, fileBytes, CHECKPOINT_HEADER_BYTES_MAX);
    const header = Buffer.alloc(headerBytes);
    fs.readSync(fd, header, 0, headerBytes, 8);
    const json = parseHeaderJson(header.toString("utf8"));
    const dataBytes = fileBytes - 8 - headerBytes;
    const tensors = new Map<string, TensorInfo>();
    for (const [name, value] of Object.entries(json)) {
      if (name === "__metadata__") continue;
      const info = parseTensorInfo(name, value, ALL_DTYPES);
      if (info.end > dataBytes) {
        throw new SafetensorsError(
          `tensor ${name} ends at byte ${info.end} of a ${dataBytes}-byte data section (truncated?)`,
        );
      }
      tensors.set(name, info);
    }
    return tensors;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The header length from a file's first 8 bytes (`start`), checked against the file's size and
 * `max`; `start` may be shorter than 8 bytes only when the whole file is.
 */
function checkHeaderLength(start: Buffer, fileBytes: number, max: number): number {
  if (fileBytes < 8) throw new SafetensorsError(`${fileBytes} bytes: too short for a header`);
  const headerBytes = start.readBigUInt64LE(0);
  if (headerBytes > BigInt(Math.min(max, fileBytes - 8))) {
    throw new SafetensorsError(`header length ${headerBytes} exceeds the file or ${max} bytes`);
  }
  return Number(headerBytes);
}

function parseHeaderJson(text: string): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(`header is not JSON: ${(err as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new SafetensorsError("header is not a JSON object");
  }
  return json as Record<string, unknown>;
}

function parseTensorInfo(name: string, value: unknown, dtypes: ReadonlySet<string>): TensorInfo {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new SafetensorsError(`tensor ${name}: entry is not an object`);
  }
  const entry = value as Record<string, unknown>;
  const dtype = entry.dtype;
  if (typeof dtype !== "string" || !dtypes.has(dtype)) {
    throw new SafetensorsError(`tensor ${name}: unknown dtype ${JSON.stringify(dtype)}`);
  }
  const shape = entry.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of sizes`);
  }
  const offsets = entry.data_offsets;
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[1] < offsets[0]
  ) {
    throw new SafetensorsError(
      `tensor ${name}: data_offsets ${JSON.stringify(offsets)} are not a byte range`,
    );
  }
  const size = DTYPE_BYTES[dtype as SafetensorsDtype];
  if (offsets[1] - offsets[0] !== elementCount(shape) * size) {
    throw new SafetensorsError(
      `tensor ${name}: ${offsets[1] - offsets[0]} bytes for shape [${shape}] of ${dtype}`,
    );
  }
  return { dtype: dtype as SafetensorsDtype, shape: shape as number[], begin: offsets[0], end: offsets[1] };
}

/** The bytes of one tensor of a parsed file (a view, not a copy). */
export function tensorBytes(bytes: Buffer, file: SafetensorsFile, name: string): Buffer {
  const info = file.tensors.get(name);
  if (!info) throw new SafetensorsError(`no tensor ${name}`);
  return bytes.subarray(file.dataOffset + info.begin, file.dataOffset + info.end);
}
