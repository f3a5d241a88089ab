import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { parseSafetensors, type SafetensorsFile } from "./safetensors";

/**
 * The only way bytes enter and leave MLX in these bindings (no constructor from a buffer, no
 * export of an array's bytes): safetensors files in a directory on a tmpfs. Every file is
 * written, used and deleted inside one call, on the engine's thread.
 */
export class Staging {
  private sequence = 0;

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /**
   * Evaluates `arrays`, saves them in one file and returns its bytes with the parsed header.
   * One file for many arrays: each save has a fixed cost, so batching is cheaper than a file
   * per block (see src/cache/README.md).
   */
  arraysToBytes(arrays: Record<string, mx.array>): { bytes: Buffer; file: SafetensorsFile } {
    const file = this.nextPath("out");
    try {
      mx.saveSafetensors(file, arrays);
      const bytes = fs.readFileSync(file);
      return { bytes, file: parseSafetensors(bytes) };
    } finally {
      fs.rmSync(file, { force: true });
    }
  }

  /**
   * Writes a safetensors file from its encoded header and the data pieces (gathered by the
   * kernel with writev, so they are not first copied into one buffer), loads it and evaluates
   * every array. The caller guarantees the header describes exactly the pieces: MLX aborts the
   * process on a malformed file.
   */
  bytesToArrays(header: Buffer, pieces: readonly Uint8Array[]): Record<string, mx.array> {
    const file = this.nextPath("in");
    try {
      const fd = fs.openSync(file, "w", 0o600);
      try {
        const all = [header, ...pieces];
        const expected = all.reduce((n, p) => n + p.byteLength, 0);
        let written = 0;
        // writev may write less than asked (large sizes, signals); continue where it stopped.
        while (written < expected) {
          written += fs.writevSync(fd, skipBytes(all, written));
        }
      } finally {
        fs.closeSync(fd);
      }
      const arrays = mx.load(file) as unknown as Record<string, mx.array>;
      mx.eval(...Object.values(arrays));
      return arrays;
    } finally {
      fs.rmSync(file, { force: true });
    }
  }

  /** Removes the directory and whatever is left in it. */
  close(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private nextPath(kind: string): string {
    return path.join(this.dir, `${kind}-${++this.sequence}.safetensors`);
  }
}

function skipBytes(pieces: readonly Uint8Array[], skip: number): Uint8Array[] {
  if (skip === 0) return pieces as Uint8Array[];
  const out: Uint8Array[] = [];
  for (const p of pieces) {
    if (skip >= p.byteLength) {
      skip -= p.byteLength;
      continue;
    }
    out.push(skip > 0 ? p.subarray(skip) : p);
    skip = 0;
  }
  return out;
}
