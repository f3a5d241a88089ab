import * as fs from "node:fs";
import { ModelError } from "./errors";

/** One tensor as a safetensors header describes it. */
export interface TensorInfo {
  dtype: string;
  shape: number[];
  /** Byte range within the data section. */
  dataOffsets: [number, number];
}

/** Bytes per element of each safetensors dtype name. */
export const DTYPE_BYTES: Readonly<Record<string, number>> = {
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
};

/** The header's upper bound on size, as in the safetensors reference implementation. */
const HEADER_BYTES_MAX = 100 * 1024 * 1024;

/**
 * Reads and checks a safetensors header: every tensor's dtype is known, its byte range matches its
 * shape and lies inside the file. MLX reads tensor data lazily and a failed read during evaluation
 * aborts the process, so a truncated or inconsistent file has to be refused here, before MLX sees it.
 */
export function readSafetensorsHeader(file: string, displayName: string): Map<string, TensorInfo> {
  const fd = fs.openSync(file, "r");
  try {
    const fileBytes = fs.fstatSync(fd).size;
    const invalid = (why: string) =>
      new ModelError("MODEL_INVALID", `${displayName}: ${why}; the file is damaged or not safetensors`);
    if (fileBytes < 8) throw invalid(`only ${fileBytes} bytes long`);
    const lengthBytes = Buffer.alloc(8);
    fs.readSync(fd, lengthBytes, 0, 8, 0);
    const headerBytes = Number(lengthBytes.readBigUInt64LE(0));
    if (headerBytes > HEADER_BYTES_MAX || 8 + headerBytes > fileBytes) {
      throw invalid(`header length ${headerBytes} does not fit the file (${fileBytes} bytes)`);
    }
    const headerBuffer = Buffer.alloc(headerBytes);
    fs.readSync(fd, headerBuffer, 0, headerBytes, 8);
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(headerBuffer.toString("utf8"));
    } catch {
      throw invalid("header is not valid JSON");
    }
    const dataBytes = fileBytes - 8 - headerBytes;
    const tensors = new Map<string, TensorInfo>();
    for (const [name, value] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      const t = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const bytesPerElement = typeof t.dtype === "string" ? DTYPE_BYTES[t.dtype] : undefined;
      if (bytesPerElement === undefined)
        throw invalid(`tensor ${name} has unknown dtype ${JSON.stringify(t.dtype)}`);
      if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isInteger(d) && d >= 0)) {
        throw invalid(`tensor ${name} has an invalid shape`);
      }
      const offsets = t.data_offsets;
      if (
        !Array.isArray(offsets) ||
        offsets.length !== 2 ||
        !offsets.every((o) => Number.isInteger(o) && o >= 0)
      ) {
        throw invalid(`tensor ${name} has invalid data_offsets`);
      }
      const [begin, end] = offsets as [number, number];
      const elements = (t.shape as number[]).reduce((a, b) => a * b, 1);
      if (end - begin !== elements * bytesPerElement) {
        throw invalid(
          `tensor ${name} occupies ${end - begin} bytes but its shape needs ${elements * bytesPerElement}`,
        );
      }
      if (end > dataBytes) {
        throw invalid(`tensor ${name} ends at byte ${end} of a ${dataBytes}-byte data section (truncated?)`);
      }
      tensors.set(name, { dtype: t.dtype as string, shape: t.shape as number[], dataOffsets: [begin, end] });
    }
    return tensors;
  } finally {
    fs.closeSync(fd);
  }
}
