import { spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

import { openStore } from "../../src/store";
import type { StoreOptions } from "../../src/store";
import { ADDON_PATH, transpileForChildren } from "./compile";
import { tempDir } from "./helpers";

// Must match crash-writer.ts.
function payloadFor(key: Buffer): Buffer {
  const bytes = 1 + (key.readUInt32LE(0) % 96_000);
  return crypto
    .createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32))
    .update(Buffer.alloc(bytes));
}

const KILLS = 24;
// Small segments and frequent checkpoints so kills land in every phase: append,
// fsync, segment roll, checkpoint write and rename, and recovery itself.
const OPTIONS: StoreOptions = {
  bytesMax: 512 << 20,
  fsync: "batch",
  segmentBytes: 512 << 10,
  checkpointEveryBytes: 1 << 20,
};

interface Outcome {
  lines: string[];
  exitSignal: NodeJS.Signals | null;
  exitCode: number | null;
}

// Kills `killAfterMs` after spawn, or after the child reported READY when afterReady is set,
// so slow process start-up on a loaded machine does not turn mid-write kills into start-up kills.
function runAndKill(
  script: string,
  dir: string,
  run: number,
  killAfterMs: number,
  afterReady: boolean,
): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, dir, `run-${run}`, JSON.stringify(OPTIONS)], {
      env: { ...process.env, KVPARK_STORE_ADDON: ADDON_PATH },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let text = "";
    let timer: NodeJS.Timeout | undefined;
    const arm = () => (timer ??= setTimeout(() => child.kill("SIGKILL"), killAfterMs));
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      text += chunk;
      if (afterReady && text.startsWith("READY\n")) arm();
    });
    if (!afterReady) arm();
    // A child that dies before READY must not leave the test waiting.
    const fallback = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("error", reject);
    child.on("close", (exitCode, exitSignal) => {
      clearTimeout(timer);
      clearTimeout(fallback);
      // A line cut by the kill is incomplete; only whole lines count.
      const lines = text.split("\n");
      lines.pop();
      resolve({ lines, exitSignal, exitCode });
    });
  });
}

describe("kill -9 while writing", () => {
  const work = tempDir("crash");
  const storeDir = path.join(work, "store");
  const { script } = transpileForChildren(path.join(work, "build"));

  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  it(`keeps every persisted block readable and verified across ${KILLS} kills`, async () => {
    const mustExist = new Map<string, Buffer>();
    const mustBeGone = new Set<string>();
    const uncertain = new Set<string>(); // delete issued, outcome not reported
    let readyRuns = 0;
    let recoveredTailRecords = 0;
    for (let run = 0; run < KILLS; run++) {
      // Mostly mid-write kills; every fourth run dies early, during open and recovery.
      const early = run % 4 === 3;
      const killAfterMs = early ? 20 + Math.floor(Math.random() * 120) : Math.floor(Math.random() * 400);
      const outcome = await runAndKill(script("crash-writer"), storeDir, run, killAfterMs, !early);
      expect(outcome.exitSignal).toBe("SIGKILL");
      expect(outcome.lines.filter((line) => /^(BAD|ERROR)/.test(line))).toEqual([]);
      if (outcome.lines.includes("READY")) readyRuns += 1;
      for (const line of outcome.lines) {
        const [tag, hex] = line.split(" ");
        if (tag === "P") {
          mustExist.set(hex, payloadFor(Buffer.from(hex, "hex")));
        } else if (tag === "d") {
          mustExist.delete(hex);
          uncertain.add(hex);
        } else if (tag === "D") {
          uncertain.delete(hex);
          mustBeGone.add(hex);
        }
      }

      const store = await openStore(storeDir, OPTIONS);
      const stats = store.stats();
      recoveredTailRecords += stats.replayedRecords;
      const indexed: Buffer[] = [];
      for await (const key of store.keys()) indexed.push(key);
      expect(indexed.length).toBe(stats.blocks);
      const indexedHex = new Set(indexed.map((key) => key.toString("hex")));
      const missing = [...mustExist.keys()].filter((hex) => !indexedHex.has(hex));
      expect(missing).toEqual([]);
      expect([...mustBeGone].filter((hex) => indexedHex.has(hex))).toEqual([]);
      // Every indexed block, reported persisted or not, must come back intact.
      const got = await store.getMany(indexed);
      const wrong = indexed.filter((key, i) => {
        const value = got[i];
        return !Buffer.isBuffer(value) || !value.equals(payloadFor(key));
      });
      expect(wrong.map((key) => key.toString("hex"))).toEqual([]);
      expect(store.stats().corruptions).toBe(0);
      for (const hex of uncertain) if (!indexedHex.has(hex)) uncertain.delete(hex);
      await store.close();
    }
    expect(readyRuns).toBeGreaterThanOrEqual((KILLS * 3) / 4);
    expect(mustExist.size).toBeGreaterThan(100);
    expect(recoveredTailRecords).toBeGreaterThan(0);
  }, 110_000);
});
