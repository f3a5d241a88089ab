import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

import { openStore } from "../../src/store";
import type { BlockStore, StoreOptions } from "../../src/store";
import { copyDir, dirBytes, keyOf, sizedPayloadFor, summarize, tempDir } from "./helpers";

const FS_BYTES = 2 << 20;
const BALLAST_BYTES = 1 << 20;
// The cap is above what the filesystem has left while the ballast is there, so
// the disk fills before the cap is reached.
const OPTIONS: StoreOptions = { bytesMax: 1536 << 10, fsync: "batch", segmentBytes: 128 << 10 };
const payload = (key: Buffer) => sizedPayloadFor(key, 8000, 24000);

const mountPoint = tempDir("diskfull");
let mountError = "";
try {
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${FS_BYTES}`, "tmpfs", mountPoint], { stdio: "pipe" });
} catch (error) {
  mountError = String((error as { stderr?: Buffer }).stderr ?? error).trim();
}
const whenMounted = mountError === "" ? it : it.skip;
if (mountError !== "") {
  console.warn(`SKIPPED disk-full tests: cannot mount a ${FS_BYTES}-byte tmpfs (needs root): ${mountError}`);
}

describe("disk full on a 2 MiB tmpfs", () => {
  const dir = path.join(mountPoint, "store");
  const ballast = path.join(mountPoint, "ballast");
  let store: BlockStore;
  const persisted: Buffer[] = [];
  let maxRounded = 0;
  const sample = () => (maxRounded = Math.max(maxRounded, dirBytes(dir).roundedBytes));

  afterAll(async () => {
    await store?.close();
    if (mountError === "") execFileSync("umount", [mountPoint]);
    fs.rmSync(mountPoint, { recursive: true, force: true });
  });

  whenMounted("drops and counts writes on ENOSPC while reads keep working", async () => {
    fs.writeFileSync(ballast, Buffer.alloc(BALLAST_BYTES, 1));
    store = await openStore(dir, OPTIONS);
    let ioErrors = 0;
    for (let i = 0; i < 300 && ioErrors < 8; i++) {
      const batch = [0, 1].map((j) => keyOf(`full-${i}-${j}`));
      const results = await store.put(batch.map((key) => ({ key, payload: payload(key) })));
      results.forEach((result, j) => {
        if (result === "persisted") persisted.push(batch[j]);
        else expect(result).toBe("KV_IO");
        if (result === "KV_IO") ioErrors += 1;
      });
      sample();
    }
    expect(ioErrors).toBe(8);
    expect(persisted.length).toBeGreaterThan(20);
    const stats = store.stats();
    expect(stats.writeErrors).toBe(ioErrors);
    expect([stats.writeErrorsEnospc, stats.writeErrorsEio, stats.writeErrorsOther]).toEqual([ioErrors, 0, 0]);
    expect(stats.blocks).toBe(persisted.length);
    expect(stats.evictions).toBe(0);
    expect(stats.bytes).toBe(dirBytes(dir).roundedBytes);
    expect(summarize(await store.getMany(persisted), persisted.map(payload))).toEqual(
      persisted.map(() => "ok"),
    );

    // Closing on a full disk cannot write its checkpoint; reopening replays the log instead.
    await store.close();
    store = await openStore(dir, OPTIONS);
    expect(summarize(await store.getMany(persisted), persisted.map(payload))).toEqual(
      persisted.map(() => "ok"),
    );
  });

  whenMounted("recovers when space returns and keeps the cap through three times its volume", async () => {
    fs.rmSync(ballast);
    let written = 0;
    for (let i = 0; written < 3 * OPTIONS.bytesMax; i++) {
      const batch = [0, 1].map((j) => keyOf(`after-${i}-${j}`));
      const results = await store.put(batch.map((key) => ({ key, payload: payload(key) })));
      expect(results).toEqual(["persisted", "persisted"]);
      written += batch.reduce((sum, key) => sum + payload(key).length, 0);
      sample();
    }
    expect(maxRounded).toBeLessThanOrEqual(OPTIONS.bytesMax);
    expect(store.stats().evictions).toBeGreaterThan(0);
    expect(store.stats().bytes).toBe(dirBytes(dir).roundedBytes);
    const keys: Buffer[] = [];
    for await (const key of store.keys()) keys.push(key);
    expect(summarize(await store.getMany(keys), keys.map(payload))).toEqual(keys.map(() => "ok"));
    await store.close();
    store = await openStore(dir, OPTIONS);
    expect(store.stats().blocks).toBe(keys.length);
    expect(summarize(await store.getMany(keys), keys.map(payload))).toEqual(keys.map(() => "ok"));
  });

  whenMounted(
    "fills again mid-run: every block held before, during and after survives a crash and a restart",
    async () => {
      // A cap above the filesystem's size: the store grows until the disk, not the cap, stops it.
      const roomy = { ...OPTIONS, bytesMax: 4 << 20 };
      await store.close();
      store = await openStore(dir, roomy);
      // Fill the filesystem to the last page, then give back a little so a few writes fit.
      const fd = fs.openSync(ballast, "w");
      try {
        for (;;) fs.writeSync(fd, Buffer.alloc(16 << 10, 1));
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe("ENOSPC");
      } finally {
        fs.closeSync(fd);
      }
      fs.truncateSync(ballast, Math.max(0, fs.statSync(ballast).size - (24 << 10)));
      let ioErrors = 0;
      for (let i = 0; i < 100 && ioErrors < 6; i++) {
        const batch = [0, 1, 2].map((j) => keyOf(`refill-${i}-${j}`));
        const results = await store.put(batch.map((key) => ({ key, payload: payload(key) })));
        for (const result of results) {
          if (result !== "persisted") expect(result).toBe("KV_IO");
          if (result === "KV_IO") ioErrors += 1;
        }
      }
      expect(ioErrors).toBeGreaterThanOrEqual(6);
      fs.rmSync(ballast);
      for (let i = 0; i < 10; i++) {
        const batch = [0, 1].map((j) => keyOf(`refilled-${i}-${j}`));
        expect(await store.put(batch.map((key) => ({ key, payload: payload(key) })))).toEqual([
          "persisted",
          "persisted",
        ]);
      }
      const stats = store.stats();
      expect(stats.writeErrorsEnospc + stats.writeErrorsEio + stats.writeErrorsOther).toBe(stats.writeErrors);
      const held: Buffer[] = [];
      for await (const key of store.keys()) held.push(key);
      // A crash now (the copy lives outside the small filesystem), then a clean restart.
      const crashed = tempDir("diskfull-crashed");
      try {
        copyDir(dir, crashed);
        const fromCrash = await openStore(crashed, roomy);
        expect(summarize(await fromCrash.getMany(held), held.map(payload))).toEqual(held.map(() => "ok"));
        const found: Buffer[] = [];
        for await (const key of fromCrash.keys()) found.push(key);
        expect(summarize(await fromCrash.getMany(found), found.map(payload))).toEqual(found.map(() => "ok"));
        await fromCrash.close();
      } finally {
        fs.rmSync(crashed, { recursive: true, force: true });
      }
      await store.close();
      store = await openStore(dir, roomy);
      expect(summarize(await store.getMany(held), held.map(payload))).toEqual(held.map(() => "ok"));
      expect(store.stats().blocks).toBe(held.length);
    },
  );
});
