import * as fs from "node:fs";
import * as path from "node:path";

import { SsdBlockStore } from "../../src/store";
import type { PutResult, StoreOptions } from "../../src/store";
import {
  copyDir,
  keyOf,
  parseSegment,
  rng,
  segmentFiles,
  sizedPayloadFor,
  summarize,
  tempDir,
} from "./helpers";

// Write faults injected under the store's own I/O (SsdBlockStore.injectFaults, native/FORMAT.md
// "Fault injection"), so every call site is reachable: appends, torn appends whose cut-off also
// fails, segment syncs, segment creation, and every step of a checkpoint.
const OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 256 << 10 };
const payload = (key: Buffer) => sizedPayloadFor(key, 1000, 20000);

describe("write errors fail only the writes they hit", () => {
  const work = tempDir("ioerrors");
  let cases = 0;
  let dir: string;
  let store: SsdBlockStore;

  beforeEach(async () => {
    dir = path.join(work, `case-${cases++}`);
    store = await SsdBlockStore.open(dir, OPTIONS);
  });
  afterEach(() => store.close());
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  const keysOf = (label: string, count: number) =>
    Array.from({ length: count }, (_, i) => keyOf(`${label}-${i}`));
  const put = (keys: Buffer[]) => store.put(keys.map((key) => ({ key, payload: payload(key) })));

  /** Opens a copy of the directory taken now (what a kill -9 leaves) and returns what each key reads as. */
  async function afterCrash(keys: Buffer[], options: StoreOptions = OPTIONS): Promise<string[]> {
    const crashed = path.join(work, `crashed-${cases++}`);
    copyDir(dir, crashed);
    const reopened = await SsdBlockStore.open(crashed, options);
    try {
      return summarize(await reopened.getMany(keys), keys.map(payload));
    } finally {
      await reopened.close();
    }
  }

  /** Closes the store and reopens it; returns what each key reads as. */
  async function afterRestart(keys: Buffer[], options: StoreOptions = OPTIONS): Promise<string[]> {
    await store.close();
    store = await SsdBlockStore.open(dir, options);
    return summarize(await store.getMany(keys), keys.map(payload));
  }

  it("an ENOSPC append fails its entry only; the rest of the batch and the next batch persist", async () => {
    const keys = keysOf("enospc", 6);
    // The segment header is the first write to the file, record 0 the second.
    store.injectFaults("op=write,file=segment,skip=3,errno=ENOSPC");
    expect(await put(keys)).toEqual([
      "persisted",
      "persisted",
      "KV_IO",
      "persisted",
      "persisted",
      "persisted",
    ]);
    const next = keysOf("enospc-next", 4);
    expect(await put(next)).toEqual(next.map(() => "persisted"));
    const stats = store.stats();
    expect([
      stats.writeErrors,
      stats.writeErrorsEnospc,
      stats.writeErrorsEio,
      stats.writeErrorsOther,
    ]).toEqual([1, 1, 0, 0]);
    const all = [...keys, ...next];
    const expected = all.map((_, i) => (i === 2 ? "KV_NOT_FOUND" : "ok"));
    expect(await afterCrash(all)).toEqual(expected);
    expect(await afterRestart(all)).toEqual(expected);
  });

  it("a torn append (100 bytes written, then EIO) is cut off; later appends in the same segment are found", async () => {
    const keys = keysOf("torn", 5);
    store.injectFaults("op=write,file=segment,skip=2,errno=EIO,bytes=100");
    expect(await put(keys)).toEqual(["persisted", "KV_IO", "persisted", "persisted", "persisted"]);
    // One segment, a clean log: the torn bytes were overwritten by the next append.
    const [segment] = segmentFiles(dir);
    expect(segmentFiles(dir).length).toBe(1);
    expect(parseSegment(segment).map((r) => r.key.toString("hex"))).toEqual(
      [0, 2, 3, 4].map((i) => keys[i].toString("hex")),
    );
    expect(store.stats().writeErrorsEio).toBe(1);
    const expected = keys.map((_, i) => (i === 1 ? "KV_NOT_FOUND" : "ok"));
    expect(await afterCrash(keys)).toEqual(expected);
    expect(await afterRestart(keys)).toEqual(expected);
  });

  it("a torn append whose cut-off also fails seals the segment; later appends in a new one are found", async () => {
    const keys = keysOf("sealed", 5);
    store.injectFaults(
      "op=write,file=segment,skip=2,errno=ENOSPC,bytes=100;op=truncate,file=segment,errno=EIO",
    );
    expect(await put(keys)).toEqual(["persisted", "KV_IO", "persisted", "persisted", "persisted"]);
    const files = segmentFiles(dir);
    expect(files.length).toBe(2);
    // The torn record stays at the end of the sealed segment ...
    const sealed = parseSegment(files[0]);
    expect(fs.statSync(files[0]).size).toBe(sealed[0].offset + 64 + sealed[0].payloadBytes + 100);
    const stats = store.stats();
    expect([stats.writeErrors, stats.writeErrorsEnospc]).toEqual([1, 1]);
    // ... and replay skips it without cutting it (it is not the newest segment's tail).
    const expected = keys.map((_, i) => (i === 1 ? "KV_NOT_FOUND" : "ok"));
    expect(await afterCrash(keys)).toEqual(expected);
    expect(await afterRestart(keys)).toEqual(expected);
    expect(store.stats().truncatedBytes).toBe(0);
  });

  it("an EIO from fdatasync fails the batch's entries in that file; the next batch lands in a new segment", async () => {
    const keys = keysOf("fsync", 4);
    // The new segment's header sync passes; the batch's sync fails.
    store.injectFaults("op=sync,file=segment,skip=1,errno=EIO");
    expect(await put(keys)).toEqual(keys.map(() => "KV_IO"));
    const next = keysOf("fsync-next", 4);
    expect(await put(next)).toEqual(next.map(() => "persisted"));
    expect(segmentFiles(dir).length).toBe(2);
    const stats = store.stats();
    expect([stats.writeErrors, stats.writeErrorsEio, stats.blocks]).toEqual([4, 4, 4]);
    // The failed batch was never acknowledged: after a restart each of its blocks is absent or
    // intact (its bytes may have reached the disk after all), never wrong.
    const got = await afterRestart([...keys, ...next]);
    expect(got.slice(4)).toEqual(next.map(() => "ok"));
    for (const result of got.slice(0, 4)) expect(["ok", "KV_NOT_FOUND"]).toContain(result);
  });

  it("a segment that cannot be created fails the entry that needed it only", async () => {
    const small = { ...OPTIONS, segmentBytes: 64 << 10 };
    await store.close();
    store = await SsdBlockStore.open(dir, small);
    const big = (key: Buffer) => sizedPayloadFor(key, 40000, 40000);
    const keys = keysOf("roll", 4);
    store.injectFaults("op=create,file=segment,skip=1,errno=ENOSPC");
    expect(await store.put(keys.map((key) => ({ key, payload: big(key) })))).toEqual([
      "persisted",
      "KV_IO",
      "persisted",
      "persisted",
    ]);
    expect(store.stats().writeErrorsEnospc).toBe(1);
    await store.close();
    store = await SsdBlockStore.open(dir, small);
    expect(summarize(await store.getMany(keys), keys.map(big))).toEqual(["ok", "KV_NOT_FOUND", "ok", "ok"]);
  });

  it.each([
    ["ENOSPC writing INDEX.tmp", "op=write,file=index,errno=ENOSPC", "writeErrorsEnospc"],
    ["EIO syncing INDEX.tmp", "op=sync,file=index,errno=EIO", "writeErrorsEio"],
    ["EIO renaming INDEX.tmp", "op=rename,file=index,errno=EIO", "writeErrorsEio"],
    ["EIO creating INDEX.tmp", "op=create,file=index,errno=EIO", "writeErrorsEio"],
    ["EROFS writing INDEX.tmp", "op=write,file=index,errno=EROFS", "writeErrorsOther"],
  ] as const)(
    "a checkpoint failing with %s keeps the previous INDEX; nothing is lost",
    async (_l, spec, field) => {
      const options = { ...OPTIONS, checkpointEveryBytes: 50_000 };
      await store.close();
      store = await SsdBlockStore.open(dir, options);
      const first = keysOf("ckpt-first", 8);
      expect(await put(first)).toEqual(first.map(() => "persisted"));
      const checkpoints = store.stats().checkpoints;
      store.injectFaults(spec);
      const second = keysOf("ckpt-second", 8);
      expect(await put(second)).toEqual(second.map(() => "persisted"));
      const stats = store.stats();
      expect([stats.checkpoints, stats.writeErrors, stats[field]]).toEqual([checkpoints, 1, 1]);
      expect(fs.readdirSync(dir)).not.toContain("INDEX.tmp");
      const third = keysOf("ckpt-third", 8);
      expect(await put(third)).toEqual(third.map(() => "persisted"));
      const all = [...first, ...second, ...third];
      expect(await afterCrash(all, options)).toEqual(all.map(() => "ok"));
      // The same faults at close(): its checkpoint fails, the next open replays.
      store.injectFaults(`${spec.replace(/count=\d+,?/, "")},count=all`);
      expect(await afterRestart(all, options)).toEqual(all.map(() => "ok"));
    },
  );

  it("an EIO syncing the active segment before a checkpoint poisons it; later writes use a new one", async () => {
    const options = { ...OPTIONS, checkpointEveryBytes: 50_000 };
    await store.close();
    store = await SsdBlockStore.open(dir, options);
    const first = keysOf("ckpt-sync-first", 8);
    // The header sync and the batch's own sync pass; the checkpoint's sync of the same file fails.
    store.injectFaults("op=sync,file=segment,skip=2,errno=EIO");
    expect(await put(first)).toEqual(first.map(() => "persisted"));
    expect(store.stats().writeErrorsEio).toBe(1);
    const second = keysOf("ckpt-sync-second", 4);
    expect(await put(second)).toEqual(second.map(() => "persisted"));
    expect(segmentFiles(dir).length).toBe(2);
    const all = [...first, ...second];
    expect(await afterCrash(all, options)).toEqual(all.map(() => "ok"));
    expect(await afterRestart(all, options)).toEqual(all.map(() => "ok"));
  });

  it("counts an errno other than ENOSPC and EIO as other", async () => {
    store.injectFaults("op=write,file=segment,skip=1,errno=EDQUOT");
    const keys = keysOf("other", 2);
    expect(await put(keys)).toEqual(["KV_IO", "persisted"]);
    const stats = store.stats();
    expect([
      stats.writeErrors,
      stats.writeErrorsEnospc,
      stats.writeErrorsEio,
      stats.writeErrorsOther,
    ]).toEqual([1, 0, 0, 1]);
  });

  it("rejects a malformed fault spec", () => {
    expect(() => store.injectFaults("op=scribble,errno=EIO")).toThrow(TypeError);
    expect(() => store.injectFaults("op=write,errno=NOPE")).toThrow(TypeError);
  });

  it("random write faults on every file over 120 batches lose only the failed writes", async () => {
    const seed = Number(process.env.KVPARK_FAULT_SEED ?? 7);
    const random = rng(seed);
    const options = { ...OPTIONS, segmentBytes: 128 << 10, checkpointEveryBytes: 200_000 };
    await store.close();
    store = await SsdBlockStore.open(dir, options);
    const ops = ["write", "sync", "create", "truncate", "rename"];
    const files = ["segment", "index", "any"];
    const errnos = ["ENOSPC", "EIO", "EDQUOT"];
    const persisted = new Set<string>();
    const failed = new Set<string>();
    const written: Buffer[] = [];
    for (let batch = 0; batch < 120; batch++) {
      if (random() < 0.4) {
        const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
        const bytes = random() < 0.5 ? `,bytes=${Math.floor(random() * 3000)}` : "";
        store.injectFaults(
          `op=${pick(ops)},file=${pick(files)},skip=${Math.floor(random() * 4)},count=${1 + Math.floor(random() * 3)},errno=${pick(errnos)}${bytes}`,
        );
      }
      const keys = keysOf(`soak-${seed}-${batch}`, 1 + Math.floor(random() * 5));
      const results: PutResult[] = await put(keys);
      results.forEach((result, i) => {
        const hex = keys[i].toString("hex");
        if (result === "persisted") persisted.add(hex);
        else {
          expect(result).toBe("KV_IO");
          failed.add(hex);
        }
      });
      written.push(...keys);
      store.injectFaults("");
    }
    const stats = store.stats();
    expect(failed.size).toBeGreaterThan(0);
    expect(stats.writeErrorsEnospc + stats.writeErrorsEio + stats.writeErrorsOther).toBe(stats.writeErrors);
    // Every persisted block is found and intact, after a crash and after a restart; a failed
    // one is absent or intact, never wrong.
    for (const got of [await afterCrash(written, options), await afterRestart(written, options)]) {
      written.forEach((key, i) => {
        if (persisted.has(key.toString("hex"))) expect([i, got[i]]).toEqual([i, "ok"]);
        else expect(["ok", "KV_NOT_FOUND"]).toContain(got[i]);
      });
    }
    // The store keeps writing once the faults are gone.
    const after = keysOf(`soak-after-${seed}`, 5);
    expect(await put(after)).toEqual(after.map(() => "persisted"));
  });
});
