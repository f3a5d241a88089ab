import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

import { openStore } from "../../src/store";
import type { StoreOptions } from "../../src/store";
import { ADDON_PATH, transpileForChildren } from "./compile";
import { tempDir } from "./helpers";

const OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 1 << 20 };

describe("the directory lock", () => {
  const work = tempDir("lock");
  const { script } = transpileForChildren(path.join(work, "build"));

  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  it("names the pid of another process holding the store open", async () => {
    const dir = path.join(work, "held");
    const child = spawn(process.execPath, [script("lock-holder"), dir], {
      env: { ...process.env, KVPARK_STORE_ADDON: ADDON_PATH },
      stdio: ["pipe", "pipe", "inherit"],
    });
    const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        let text = "";
        child.stdout.setEncoding("utf8");
        child.stdout.on("data", (chunk: string) => {
          text += chunk;
          if (text.startsWith("READY\n")) resolve();
          else if (text.includes("\n")) reject(new Error(text));
        });
        child.on("error", reject);
        child.on("close", (code) =>
          reject(new Error(`lock holder exited with ${code} before READY: ${text}`)),
        );
      });
      await expect(openStore(dir, OPTIONS)).rejects.toMatchObject({
        name: "StoreError",
        code: "KV_LOCKED",
        message: expect.stringContaining(`held by pid ${child.pid} (a previous engine still shutting down?)`),
      });
    } finally {
      child.stdin.end();
    }
    expect(await exited).toBe(0);
    // Released: this process can open it now, and records itself as the holder.
    const store = await openStore(dir, OPTIONS);
    expect(fs.readFileSync(path.join(dir, "LOCK"), "utf8")).toBe(`${process.pid}\n`);
    await store.close();
  });

  it("names this process when the holder is another store in it", async () => {
    const dir = path.join(work, "self");
    const store = await openStore(dir, OPTIONS);
    await expect(openStore(dir, OPTIONS)).rejects.toMatchObject({
      code: "KV_LOCKED",
      message: expect.stringContaining(`held by pid ${process.pid} (this process)`),
    });
    await store.close();
  });

  it("a stale pid left by a dead holder does not block, and is replaced", async () => {
    const dir = path.join(work, "stale");
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "LOCK"), "999999999\n");
    const store = await openStore(dir, OPTIONS);
    expect(fs.readFileSync(path.join(dir, "LOCK"), "utf8")).toBe(`${process.pid}\n`);
    await store.close();
  });
});
