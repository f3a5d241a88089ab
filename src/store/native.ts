import * as fs from "node:fs";
import * as path from "node:path";

import { StoreError, codeFromNative, isStoreErrorCode } from "./errors";
import type { StoreErrorCode } from "./errors";
import type {
  BlockStore,
  DeleteResult,
  GetResult,
  PinKind,
  PinResult,
  PutEntry,
  PutResult,
  StoreOptions,
  StoreStats,
} from "./types";
import { KEY_BYTES } from "./types";

interface NativeStoreHandle {
  open(dir: string, options: object): Promise<void>;
  write(keys: Buffer, payloads: (Buffer | null)[]): Promise<Int32Array>;
  getMany(keys: Buffer): Promise<(Buffer | number)[]>;
  getManyInto(keys: Buffer, arena: Buffer): Promise<ArenaRead>;
  has(key: Buffer): boolean;
  pin(key: Buffer, hard: boolean, ttlMs: number): number;
  unpin(key: Buffer): boolean;
  keys(): Buffer;
  stats(): StoreStats;
  close(): Promise<void>;
  setNowMs(ms: number): void;
  injectFaults(spec: string): void;
}

/**
 * For key i, spans[2i] and spans[2i + 1] are the payload's offset and length in the arena; or -1
 * and the native error code; or -2 and the index in `fallbacks` of a payload that did not fit.
 */
interface ArenaRead {
  spans: Float64Array;
  fallbacks: Buffer[];
}

export interface AllocatorStats {
  name: "jemalloc" | "system";
  version: string;
  allocatedBytes: number;
  activeBytes: number;
  residentBytes: number;
}

interface NativeModule {
  NativeStore: new () => NativeStoreHandle;
  formatVersion: number;
  allocatorStats(): AllocatorStats;
  allocatorPurge(): boolean;
}

const ADDON_RELATIVE = path.join("native", "build", "Release", "kvpark_store.node");

function findAddon(): string {
  const override = process.env.KVPARK_STORE_ADDON;
  if (override) return override;
  // Compiled code lives under dist/, sources under src/: walk up from both this
  // file and the working directory to the repository root.
  for (const start of [__dirname, process.cwd()]) {
    for (let dir = start; ; dir = path.dirname(dir)) {
      const candidate = path.join(dir, ADDON_RELATIVE);
      if (fs.existsSync(candidate)) return candidate;
      if (path.dirname(dir) === dir) break;
    }
  }
  throw new Error(`${ADDON_RELATIVE} not found: run npm run build:native`);
}

let nativeModule: NativeModule | undefined;
function loadNative(): NativeModule {
  nativeModule ??= require(findAddon()) as NativeModule;
  return nativeModule;
}

/** Which malloc serves this process: "jemalloc <version>" or "system" (native/src/allocator.h). */
export function allocatorName(): string {
  const stats = allocatorStats();
  return stats.name === "jemalloc" ? `jemalloc ${stats.version.split("-")[0]}` : "system";
}

/**
 * The process's malloc and its counters: with jemalloc, bytes in live allocations, in the pages
 * holding them (active) and resident (also freed pages kept for reuse); zeros with the system's.
 */
export function allocatorStats(): AllocatorStats {
  return loadNative().allocatorStats();
}

/** Returns the pages the allocator keeps for reuse to the kernel now (jemalloc; a no-op otherwise). */
export function allocatorPurge(): boolean {
  return loadNative().allocatorPurge();
}

/** The on-disk format version this build writes. */
export function storeFormatVersion(): number {
  return loadNative().formatVersion;
}

// Upper bound on one native write call; larger queues are split so a single
// fdatasync never waits behind an unbounded amount of data.
const MERGED_WRITE_BYTES_MAX = 256 * 1024 * 1024;
const MERGED_WRITE_ENTRIES_MAX = 16384;
const SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024;
const SEGMENT_BYTES_MIN = 64 * 1024;
const SEGMENT_BYTES_MAX = 2 ** 32;
// Matches kvstore::MaxPayloadBytes: a record and the segment header must fit one segment.
const SEGMENT_HEADER_BYTES = 64;
const RECORD_HEADER_BYTES = 64;
const PAYLOAD_BYTES_LIMIT = 2 ** 30;
// kvstore::kArenaAlign: getManyInto starts each payload at an address that is a multiple of this.
const ARENA_ALIGN = 16;

interface QueuedWrite {
  keys: Buffer[];
  payloads: (Buffer | null)[];
  resolve: (codes: number[]) => void;
  reject: (error: unknown) => void;
}

function requireKey(key: unknown): Buffer {
  if (!Buffer.isBuffer(key) || key.length !== KEY_BYTES) {
    throw new TypeError(`key must be a Buffer of ${KEY_BYTES} bytes`);
  }
  return key;
}

function packKeys(keys: readonly Buffer[]): Buffer {
  if (!Array.isArray(keys)) throw new TypeError("keys must be an array");
  return Buffer.concat(keys.map(requireKey), keys.length * KEY_BYTES);
}

function requireCount(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}]`);
  }
  return value;
}

type NormalizedOptions = Required<Omit<StoreOptions, "nowMs">>;

function normalizeOptions(options: StoreOptions): NormalizedOptions {
  if (typeof options !== "object" || options === null) throw new TypeError("options must be an object");
  const segmentBytes = requireCount(
    "segmentBytes",
    options.segmentBytes ?? SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MIN,
    SEGMENT_BYTES_MAX,
  );
  const bytesMax = requireCount("bytesMax", options.bytesMax, 4 * segmentBytes, Number.MAX_SAFE_INTEGER);
  if (options.fsync !== "batch" && options.fsync !== "none") {
    throw new TypeError("fsync must be 'batch' or 'none'");
  }
  return {
    bytesMax,
    fsync: options.fsync,
    segmentBytes,
    checkpointEveryBytes: requireCount(
      "checkpointEveryBytes",
      options.checkpointEveryBytes ?? 256 * 1024 * 1024,
      1,
      Number.MAX_SAFE_INTEGER,
    ),
    readThreads: requireCount("readThreads", options.readThreads ?? 8, 1, 64),
    pinnedBytesMax: requireCount(
      "pinnedBytesMax",
      options.pinnedBytesMax ?? Math.floor(bytesMax / 2),
      0,
      bytesMax,
    ),
  };
}

function readError(code: number): StoreErrorCode {
  const name = codeFromNative(code);
  if (name === "OK") throw new Error("native store returned OK without a payload");
  return name;
}

function readClock(nowMs: () => number): number {
  const ms = nowMs();
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0 || ms > Number.MAX_SAFE_INTEGER) {
    throw new RangeError("nowMs() must return non-negative Unix milliseconds");
  }
  return Math.floor(ms);
}

function toStoreError(error: unknown): unknown {
  // Duck-typed: errors from the addon may come from another realm (jest's VM, workers).
  const coded = error as { code?: unknown; message?: unknown } | null;
  if (isStoreErrorCode(coded?.code) && typeof coded?.message === "string") {
    return new StoreError(coded.code, coded.message);
  }
  return error;
}

/** The SSD block store backed by the native addon (native/FORMAT.md). */
export class SsdBlockStore implements BlockStore {
  private readonly handle: NativeStoreHandle;
  private readonly payloadBytesMax: number;
  private readonly queue: QueuedWrite[] = [];
  private writing = false;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly inflight = new Set<Promise<unknown>>();
  // Arenas getManyInto is reading into now.
  private readonly arenasInUse = new Set<Buffer>();

  private readonly nowMs: (() => number) | undefined;

  private constructor(
    handle: NativeStoreHandle,
    options: NormalizedOptions,
    nowMs: (() => number) | undefined,
  ) {
    this.handle = handle;
    this.nowMs = nowMs;
    this.payloadBytesMax = Math.min(
      options.segmentBytes - SEGMENT_HEADER_BYTES - RECORD_HEADER_BYTES,
      PAYLOAD_BYTES_LIMIT,
    );
  }

  /**
   * Bytes of an arena that holds payloads of these sizes in one getManyInto, whatever its address:
   * each payload starts at a 16-byte aligned address, so each takes its size rounded up to 16, and
   * up to 15 bytes may go before the first.
   */
  static arenaBytes(payloadBytes: readonly number[]): number {
    if (!Array.isArray(payloadBytes)) throw new TypeError("payloadBytes must be an array");
    let total = ARENA_ALIGN - 1;
    for (const bytes of payloadBytes) {
      total +=
        Math.ceil(requireCount("payloadBytes", bytes, 0, PAYLOAD_BYTES_LIMIT) / ARENA_ALIGN) * ARENA_ALIGN;
    }
    return total;
  }

  /** Opens (creating if needed) a store directory; rejects with KV_LOCKED, KV_FORMAT or KV_IO. */
  static async open(dir: string, options: StoreOptions): Promise<SsdBlockStore> {
    if (typeof dir !== "string" || dir.length === 0) throw new TypeError("dir must be a non-empty string");
    const normalized = normalizeOptions(options);
    const nowMs = options.nowMs;
    if (nowMs !== undefined && typeof nowMs !== "function") throw new TypeError("nowMs must be a function");
    const handle = new (loadNative().NativeStore)();
    try {
      // With a clock of its own the core reads the time this facade last gave it.
      await handle.open(path.resolve(dir), nowMs ? { ...normalized, clockMs: readClock(nowMs) } : normalized);
    } catch (error) {
      throw toStoreError(error);
    }
    return new SsdBlockStore(handle, normalized, nowMs);
  }

  /**
   * Test-only: makes the store's own file I/O fail. `spec` is one or more rules separated by
   * ";", each "op=write|sync|create|truncate|rename|any, file=segment|index|lock|dir|any,
   * skip=N (matching calls that pass first, default 0), count=N|all (calls that then fail,
   * default 1), errno=ENOSPC|EIO|<name>, bytes=N (a write puts N bytes down before failing)"
   * (native/FORMAT.md, "Fault injection"). "" removes all rules. Throws TypeError on a bad spec.
   */
  injectFaults(spec: string): void {
    if (typeof spec !== "string") throw new TypeError("spec must be a string");
    this.requireOpen();
    try {
      this.handle.injectFaults(spec);
    } catch (error) {
      // Rethrown in this realm (jest runs tests in a VM context of their own).
      throw new TypeError((error as Error).message, { cause: error });
    }
  }

  put(entries: readonly PutEntry[]): Promise<PutResult[]> {
    if (!Array.isArray(entries)) throw new TypeError("entries must be an array");
    const keys: Buffer[] = [];
    const payloads: Buffer[] = [];
    for (const entry of entries) {
      keys.push(requireKey(entry?.key));
      if (!Buffer.isBuffer(entry.payload)) throw new TypeError("payload must be a Buffer");
      payloads.push(entry.payload);
    }
    const results: PutResult[] = new Array<PutResult>(entries.length);
    const accepted: number[] = [];
    payloads.forEach((payload, i) => {
      if (payload.length > this.payloadBytesMax) results[i] = "KV_CAPACITY";
      else accepted.push(i);
    });
    return this.track(
      this.enqueue(
        accepted.map((i) => keys[i]),
        accepted.map((i) => payloads[i]),
      ).then((codes) => {
        codes.forEach((code, j) => {
          const name = codeFromNative(code);
          results[accepted[j]] = name === "OK" ? "persisted" : name;
        });
        return results;
      }),
    );
  }

  getMany(keys: readonly Buffer[]): Promise<GetResult[]> {
    const packed = packKeys(keys);
    if (this.closed) return Promise.resolve(keys.map(() => "KV_CLOSED" as const));
    this.syncClock();
    return this.track(
      this.handle
        .getMany(packed)
        .then((values) => values.map((value) => (typeof value === "number" ? readError(value) : value))),
    );
  }

  getManyInto(keys: readonly Buffer[], arena: Buffer): Promise<GetResult[]> {
    const packed = packKeys(keys);
    if (!Buffer.isBuffer(arena)) throw new TypeError("arena must be a Buffer");
    if (this.closed) return Promise.resolve(keys.map(() => "KV_CLOSED" as const));
    this.requireFreeArena(arena);
    this.syncClock();
    const reading = this.handle.getManyInto(packed, arena);
    // An empty arena receives no bytes: it cannot collide with another.
    if (arena.length > 0) this.arenasInUse.add(arena);
    return this.track(
      reading
        .finally(() => this.arenasInUse.delete(arena))
        .then(({ spans, fallbacks }) => {
          const results = new Array<GetResult>(spans.length / 2);
          for (let i = 0; i < results.length; i++) {
            const at = spans[2 * i];
            const value = spans[2 * i + 1];
            if (at >= 0) results[i] = arena.subarray(at, at + value);
            else results[i] = at === -2 ? fallbacks[value] : readError(value);
          }
          return results;
        }),
    );
  }

  has(key: Buffer): boolean {
    requireKey(key);
    this.requireOpen();
    return this.handle.has(key);
  }

  delete(key: Buffer): Promise<DeleteResult> {
    requireKey(key);
    return this.track(
      this.enqueue([key], [null]).then(([code]) => {
        const name = codeFromNative(code);
        return name === "OK" ? "deleted" : name;
      }),
    );
  }

  pin(key: Buffer, kind: PinKind): PinResult {
    requireKey(key);
    this.requireOpen();
    this.syncClock();
    let code: number;
    if (kind === "hard") {
      code = this.handle.pin(key, true, 0);
    } else if (typeof kind === "object" && kind !== null) {
      code = this.handle.pin(key, false, requireCount("ttlMs", kind.ttlMs, 1, Number.MAX_SAFE_INTEGER));
    } else {
      throw new TypeError("pin kind must be 'hard' or { ttlMs }");
    }
    const name = codeFromNative(code);
    return name === "OK" ? "pinned" : name;
  }

  unpin(key: Buffer): boolean {
    requireKey(key);
    this.requireOpen();
    return this.handle.unpin(key);
  }

  stats(): StoreStats {
    this.requireOpen();
    this.syncClock();
    const stats = this.handle.stats();
    // Writes merged in the facade's queue wait here, not in the native store.
    stats.queueDepth += this.queue.reduce((sum, item) => sum + item.keys.length, 0);
    return stats;
  }

  async *keys(): AsyncIterableIterator<Buffer> {
    this.requireOpen();
    const packed = this.handle.keys();
    for (let offset = 0; offset < packed.length; offset += KEY_BYTES) {
      yield Buffer.from(packed.subarray(offset, offset + KEY_BYTES));
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      // Everything accepted before close() completes first.
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
      await this.handle.close();
    })();
    return this.closing;
  }

  // The native core cannot call back into JavaScript from its threads: it reads the time last
  // set here, before every call whose work may expire soft pins (writes evict, reads compact).
  private syncClock(): void {
    if (this.nowMs) this.handle.setNowMs(readClock(this.nowMs));
  }

  // Two reads filling the same bytes would hand out views whose bytes change under them.
  private requireFreeArena(arena: Buffer): void {
    if (arena.length === 0) return;
    for (const other of this.arenasInUse) {
      if (
        other.buffer === arena.buffer &&
        other.byteOffset < arena.byteOffset + arena.length &&
        arena.byteOffset < other.byteOffset + other.length
      ) {
        throw new RangeError("arena overlaps the arena of a getManyInto still reading");
      }
    }
  }

  private requireOpen(): void {
    if (this.closed) throw new StoreError("KV_CLOSED", "store is closed");
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.inflight.add(promise);
    const forget = () => this.inflight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  // Writes and deletes share one queue: while a native write runs, later calls
  // gather here and go down together, so concurrent callers share one fdatasync.
  private enqueue(keys: Buffer[], payloads: (Buffer | null)[]): Promise<number[]> {
    if (this.closed) return Promise.resolve(keys.map(() => 7 /* KV_CLOSED */));
    if (keys.length === 0) return Promise.resolve([]);
    return new Promise<number[]>((resolve, reject) => {
      this.queue.push({ keys, payloads, resolve, reject });
      if (!this.writing) void this.pump();
    });
  }

  private async pump(): Promise<void> {
    this.writing = true;
    while (this.queue.length > 0) {
      const batch: QueuedWrite[] = [];
      let bytes = 0;
      let entries = 0;
      while (this.queue.length > 0) {
        const next = this.queue[0];
        const nextBytes = next.payloads.reduce((sum, p) => sum + (p?.length ?? 0), 0);
        const fits =
          bytes + nextBytes <= MERGED_WRITE_BYTES_MAX &&
          entries + next.keys.length <= MERGED_WRITE_ENTRIES_MAX;
        if (batch.length > 0 && !fits) break;
        batch.push(this.queue.shift() as QueuedWrite);
        bytes += nextBytes;
        entries += next.keys.length;
      }
      const keys = Buffer.concat(batch.flatMap((item) => item.keys));
      const payloads = batch.flatMap((item) => item.payloads);
      try {
        this.syncClock();
        const codes = await this.handle.write(keys, payloads);
        let offset = 0;
        for (const item of batch) {
          item.resolve(Array.from(codes.subarray(offset, offset + item.keys.length)));
          offset += item.keys.length;
        }
      } catch (error) {
        for (const item of batch) item.reject(toStoreError(error));
      }
    }
    this.writing = false;
  }
}
