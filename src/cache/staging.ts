import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { encodeHeader, parseSafetensors, type SafetensorsFile, type TensorSpec } from "../util/safetensors";

/**
 * The only way bytes enter and leave MLX in these bindings (no constructor from a buffer, no
 * export of an array's bytes): safetensors files in a directory on a tmpfs, written and read
 * on the engine's thread.
 */
export class Staging {
  private sequence = 0;
  private readonly input: KeptFile;
  private readonly layers: KeptFile;
  private layersBusy = false;
  /**
   * The buffers the layer file's last load became, held weakly: the file is written again only
   * once those still alive have read it (see LayerFile.load).
   */
  private layersReaders: WeakRef<mx.array>[] = [];

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.input = new KeptFile(dir, "restore.safetensors");
    this.layers = new KeptFile(dir, "layers.safetensors");
  }

  /**
   * A file of whole tensors written piece by piece, asynchronously, as a restore's batches are
   * read and checked, then loaded once (LayerFile); null while another restore holds it. Kept and
   * rewritten in place between restores, like the input file of bytesToArrays.
   */
  layerFile(specs: readonly TensorSpec[]): LayerFile | null {
    if (this.layersBusy) return null;
    this.layersRead();
    const fd = this.layers.open();
    this.layersBusy = true;
    return new LayerFile(fd, this.layers.path, specs, (readers) => {
      this.layersBusy = false;
      this.layersReaders = readers.map((a) => new WeakRef(a));
    });
  }

  /**
   * Evaluates the buffers the layer file's last load became where they are still alive, so that
   * none reads the file after it is written again. A buffer collected meanwhile belonged to a
   * sequence that is gone: whatever its load reads, nothing uses.
   */
  private layersRead(): void {
    const alive = this.layersReaders.map((r) => r.deref()).filter((a): a is mx.array => a !== undefined);
    if (alive.length > 0) mx.eval(...alive);
    this.layersReaders = [];
  }

  /**
   * Evaluates `arrays`, saves them in one file and returns its bytes with the parsed header.
   * One file for many arrays: each save has a fixed cost, so batching is cheaper than a file
   * per block (see src/cache/README.md).
   */
  arraysToBytes(arrays: Record<string, mx.array>): { bytes: Buffer; file: SafetensorsFile } {
    const file = this.nextPath("out");
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
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
   *
   * The file is rewritten in place and kept between calls, and never shrunk: writing into tmpfs
   * pages that already exist runs at memory speed, while a fresh file pays for allocating every
   * page (measured: 50 MB in 15-30 ms rewritten, 30-56 ms fresh, plus about 10 ms to delete it).
   * mx.load reads the tensors at the header's offsets and ignores bytes after the last one, so
   * what an earlier, larger batch left there is harmless; the file stays as large as the largest
   * batch (restoreBatchBytesMax, or one block larger than that). Every array is evaluated before
   * returning, so no lazy load can see the next rewrite.
   */
  bytesToArrays(header: Buffer, pieces: readonly Uint8Array[]): Record<string, mx.array> {
    const fd = this.input.open();
    const all = [header, ...pieces];
    const expected = all.reduce((n, p) => n + p.byteLength, 0);
    let written = 0;
    // writev may write less than asked (large sizes, signals); continue where it stopped.
    while (written < expected) {
      written += fs.writevSync(fd, skipBytes(all, written), written);
    }
    const arrays = mx.load(this.input.path) as unknown as Record<string, mx.array>;
    mx.eval(...Object.values(arrays));
    return arrays;
  }

  /**
   * Grows the input file to `bytes` (zeros), so that the first restores after a start write into
   * pages that exist instead of allocating them (see bytesToArrays).
   */
  prepare(bytes: number): void {
    grow(this.input.open(), bytes);
  }

  /**
   * Grows the layer file to hold `specs` (zeros), so that a restore staged whole after a start
   * writes into tmpfs pages that exist (see layerFile, prepare).
   */
  prepareLayers(specs: readonly TensorSpec[]): void {
    this.layersRead();
    const bytes = encodeHeader(specs, {}).length + specs.reduce((n, t) => n + t.byteLength, 0);
    grow(this.layers.open(), bytes);
  }

  /** Removes the directory and whatever is left in it. */
  close(): void {
    this.layersRead();
    this.input.close();
    this.layers.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private nextPath(kind: string): string {
    return path.join(this.dir, `${kind}-${++this.sequence}.safetensors`);
  }
}

/**
 * A file of the staging directory kept open between uses: opened on first use, and again when it
 * was removed under us (a tmpfs cleaner).
 */
class KeptFile {
  private fd: number | null = null;
  readonly path: string;

  constructor(
    private readonly dir: string,
    name: string,
  ) {
    this.path = path.join(dir, name);
  }

  open(): number {
    if (this.fd === null || !fs.existsSync(this.path)) {
      if (this.fd !== null) fs.closeSync(this.fd);
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      this.fd = fs.openSync(this.path, "w+", 0o600);
    }
    return this.fd;
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

/**
 * A safetensors file of whole tensors whose bytes arrive in pieces: each `write` goes to the
 * thread pool at once (a positioned writev), so the engine's thread checks the next blocks while
 * the kernel copies these; `load` writes the header, waits for every write and loads the file with
 * one mx.load. The caller writes every byte of every tensor before `load` (the file is reused, so
 * a byte left out would be whatever an earlier restore put there), and calls `close` in the end,
 * loaded or not, so that no write is still running when the file is next used.
 */
export class LayerFile {
  private readonly header: Buffer;
  private readonly begins = new Map<string, number>();
  private readonly writes: Promise<void>[] = [];
  private error: Error | null = null;
  private closed = false;
  private readers: mx.array[] = [];

  constructor(
    private readonly fd: number,
    private readonly file: string,
    specs: readonly TensorSpec[],
    /** Hands the file back, with the arrays that may still read it (see readBy). */
    private readonly release: (readers: mx.array[]) => void,
  ) {
    this.header = encodeHeader(specs, {});
    let at = this.header.length;
    for (const spec of specs) {
      this.begins.set(spec.name, at);
      at += spec.byteLength;
    }
  }

  /** Writes `pieces` back to back from byte `offset` of tensor `name`'s data. */
  write(name: string, offset: number, pieces: readonly Uint8Array[]): void {
    const begin = this.begins.get(name);
    if (begin === undefined) throw new RangeError(`layer file: no tensor ${name}`);
    this.queue(begin + offset, pieces);
  }

  /**
   * Writes the header, waits for the pieces and loads every tensor; null when a write failed (a
   * full tmpfs), which leaves the file unfit to load. The tensors load in the background while
   * the caller goes on (mx.asyncEval; MLX reads files on threads of its own): a forward over
   * them waits for each where it first reads it, so the load overlaps the forward's first layers
   * instead of preceding it. The caller names the arrays the tensors became (readBy), which the
   * staging directory evaluates before the file is next written.
   */
  async load(): Promise<Record<string, mx.array> | null> {
    if (this.closed) throw new Error("layer file: closed");
    this.queue(0, [this.header]);
    await Promise.all(this.writes);
    if (this.error) return null;
    const arrays = mx.load(this.file) as unknown as Record<string, mx.array>;
    mx.asyncEval(...Object.values(arrays));
    return arrays;
  }

  /** The first write into the file that failed (load then returns null), if any. */
  get failure(): Error | null {
    return this.error;
  }

  /**
   * The arrays the loaded tensors became (a sequence's buffers), held weakly once the file is
   * closed: holding them would make their owner's next write copy them instead of writing in
   * place (see KVCache).
   */
  readBy(arrays: mx.array[]): void {
    this.readers = arrays;
  }

  /** Resolves when every write queued so far has ended: the buffers they wrote from may be reused. */
  async settled(): Promise<void> {
    await Promise.all(this.writes.slice());
  }

  /** Waits for the writes still running and hands the file back to the staging directory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.writes);
    const readers = this.readers;
    this.readers = [];
    this.release(readers);
  }

  /** Starts a write on the thread pool; a failure is kept for load, never thrown here. */
  private queue(position: number, pieces: readonly Uint8Array[]): void {
    this.writes.push(this.writeAll(position, pieces).catch((err: Error) => void (this.error ??= err)));
  }

  private async writeAll(position: number, pieces: readonly Uint8Array[]): Promise<void> {
    const expected = pieces.reduce((n, p) => n + p.byteLength, 0);
    let written = 0;
    // writev may write less than asked (large sizes, signals); continue where it stopped.
    while (written < expected) {
      const { bytesWritten } = await writev(this.fd, skipBytes(pieces, written), position + written);
      written += bytesWritten;
    }
  }
}

/** Extends a file with zeros to `bytes`, writing them, so that its pages exist (a tmpfs allocates on write). */
function grow(fd: number, bytes: number): void {
  const size = fs.fstatSync(fd).size;
  const piece = Buffer.alloc(Math.min(8 * 1024 * 1024, Math.max(0, bytes - size)));
  for (let at = size; at < bytes; at += piece.length) {
    fs.writeSync(fd, piece, 0, Math.min(piece.length, bytes - at), at);
  }
}

function writev(fd: number, buffers: Uint8Array[], position: number): Promise<{ bytesWritten: number }> {
  return new Promise((resolve, reject) =>
    fs.writev(fd, buffers as NodeJS.ArrayBufferView[], position, (err, bytesWritten) =>
      err ? reject(err) : resolve({ bytesWritten }),
    ),
  );
}

/**
 * Removes staging directories named kvpark-<pid> under `base` whose process is gone: an engine
 * that died leaves its files on the tmpfs, where they hold memory until removed.
 */
export function removeStaleStagingDirs(base: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(base);
  } catch {
    return removed;
  }
  for (const name of names) {
    const pid = /^kvpark-(\d+)$/.exec(name)?.[1];
    if (!pid || Number(pid) === process.pid || processExists(Number(pid))) continue;
    fs.rmSync(path.join(base, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
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
