import * as fs from "node:fs";

/**
 * The file operations of the SSD tier's side files (chain.log, pins.log), as a seam: tests hand
 * the tier one that fails writes part-way with ENOSPC or EIO. The store's files are the native
 * store's own business and never go through here.
 */
export interface FileIo {
  /** Opens a file: "r+" (read and write, must exist) or "w" (created or emptied). */
  open(file: string, flags: "r+" | "w"): number;
  /** Writes at `position`; returns the bytes written, which may be fewer than asked. */
  write(fd: number, bytes: Buffer, offset: number, length: number, position: number): number;
  truncate(fd: number, length: number): void;
  size(fd: number): number;
  /** fdatasync on the I/O thread pool. */
  sync(fd: number): Promise<void>;
  /** fdatasync on this thread. */
  syncNow(fd: number): void;
  close(fd: number): void;
  rename(from: string, to: string): void;
  /** fsync of a directory, so that a rename in it is durable. */
  syncDir(dir: string): void;
  /** The whole file, or null when it does not exist. */
  read(file: string): Buffer | null;
  /** Removes a file; nothing when it does not exist. */
  remove(file: string): void;
}

/** FileIo over node:fs. */
export const nodeFileIo: FileIo = {
  open: (file, flags) => fs.openSync(file, flags, 0o600),
  write: (fd, bytes, offset, length, position) => fs.writeSync(fd, bytes, offset, length, position),
  truncate: (fd, length) => fs.ftruncateSync(fd, length),
  size: (fd) => fs.fstatSync(fd).size,
  sync: (fd) => new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()))),
  syncNow: (fd) => fs.fdatasyncSync(fd),
  close: (fd) => fs.closeSync(fd),
  rename: (from, to) => fs.renameSync(from, to),
  syncDir: (dir) => {
    const fd = fs.openSync(dir, "r");
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  },
  read: (file) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
  },
  remove: (file) => fs.rmSync(file, { force: true }),
};

/** Writes all of `bytes` at `position`; on failure the error carries how many bytes went down. */
export function writeAllAt(io: FileIo, fd: number, bytes: Buffer, position: number): void {
  let written = 0;
  try {
    while (written < bytes.length) {
      const n = io.write(fd, bytes, written, bytes.length - written, position + written);
      if (n <= 0) throw Object.assign(new Error("write made no progress"), { code: "EIO" });
      written += n;
    }
  } catch (err) {
    throw Object.assign(err as Error, { bytesWritten: written });
  }
}

/** Bytes a failed writeAllAt put down before it failed. */
export function bytesWritten(err: unknown): number {
  const n = (err as { bytesWritten?: unknown }).bytesWritten;
  return typeof n === "number" ? n : 0;
}
