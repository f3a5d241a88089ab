import * as path from "node:path";
import { nodeFileIo, type FileIo } from "../../src/cache/file-io";

/** What the faulty file I/O does to the files whose name starts with `file`; null code: nothing. */
export interface Fault {
  code: "ENOSPC" | "EIO" | null;
  file: string;
  /** Bytes the next writes still put down before they fail (a write cut short part-way). */
  partialBytes: number;
  /** Which operations fail. */
  ops: ReadonlySet<"write" | "truncate" | "sync">;
}

/**
 * node:fs file I/O for the SSD tier's side files with faults injected as `fault` says: writes that
 * put part of their bytes down and then fail, truncates and syncs that fail. Change `fault` to
 * fill the disk or give the space back.
 */
export function faultyIo(): { io: FileIo; fault: Fault; failures: string[] } {
  const names = new Map<number, string>();
  const fault: Fault = { code: null, file: "chain.log", partialBytes: 0, ops: new Set(["write"]) };
  const failures: string[] = [];
  const hit = (fd: number, op: "write" | "truncate" | "sync") =>
    fault.code !== null && fault.ops.has(op) && (names.get(fd) ?? "").startsWith(fault.file);
  const error = (op: string) => {
    failures.push(`${op} ${fault.code}`);
    return Object.assign(new Error(`${fault.code}: injected ${op} failure`), { code: fault.code });
  };
  const io: FileIo = {
    ...nodeFileIo,
    open: (file, flags) => {
      const fd = nodeFileIo.open(file, flags);
      names.set(fd, path.basename(file));
      return fd;
    },
    write: (fd, bytes, offset, length, position) => {
      if (!hit(fd, "write")) return nodeFileIo.write(fd, bytes, offset, length, position);
      const n = Math.min(fault.partialBytes, length);
      fault.partialBytes -= n;
      if (n > 0) return nodeFileIo.write(fd, bytes, offset, n, position);
      throw error("write");
    },
    truncate: (fd, length) => {
      if (hit(fd, "truncate")) throw error("truncate");
      nodeFileIo.truncate(fd, length);
    },
    sync: (fd) => (hit(fd, "sync") ? Promise.reject(error("sync")) : nodeFileIo.sync(fd)),
    syncNow: (fd) => {
      if (hit(fd, "sync")) throw error("sync");
      nodeFileIo.syncNow(fd);
    },
    close: (fd) => {
      names.delete(fd);
      nodeFileIo.close(fd);
    },
  };
  return { io, fault, failures };
}
