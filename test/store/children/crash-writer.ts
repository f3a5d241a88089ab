// Writes and deletes blocks in a loop until killed, printing one line per
// outcome the store reported, so the parent knows what must survive:
//   P <hex>  the block was reported persisted
//   d <hex>  a delete was issued      D <hex>  the delete was reported done
import * as crypto from "node:crypto";
import * as fs from "node:fs";

import { openStore } from "../../../src/store";

const [dir, runLabel, optionsJson] = process.argv.slice(2);

function payloadFor(key: Buffer): Buffer {
  const bytes = 1 + (key.readUInt32LE(0) % 96_000);
  return crypto
    .createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32))
    .update(Buffer.alloc(bytes));
}

function say(line: string): void {
  fs.writeSync(1, `${line}\n`);
}

async function main(): Promise<void> {
  const store = await openStore(dir, JSON.parse(optionsJson));
  say("READY");
  const written: Buffer[] = [];
  for (let i = 0; ; i++) {
    const batch = Array.from({ length: 1 + (i % 6) }, (_, j) => {
      const key = crypto.createHash("sha256").update(`${runLabel}/${i}/${j}`).digest();
      return { key, payload: payloadFor(key) };
    });
    const results = await store.put(batch);
    results.forEach((result, j) => {
      if (result === "persisted") {
        say(`P ${batch[j].key.toString("hex")}`);
        written.push(batch[j].key);
      }
    });
    if (i % 4 === 3 && written.length > 0) {
      const victim = written.splice(i % written.length, 1)[0];
      say(`d ${victim.toString("hex")}`);
      if ((await store.delete(victim)) === "deleted") say(`D ${victim.toString("hex")}`);
    }
    if (i % 5 === 0 && written.length > 0) {
      const sample = written.slice(-8);
      const got = await store.getMany(sample);
      got.forEach((value, j) => {
        if (!Buffer.isBuffer(value) || !value.equals(payloadFor(sample[j]))) {
          say(`BAD ${sample[j].toString("hex")} ${String(Buffer.isBuffer(value) ? "bytes" : value)}`);
          process.exit(3);
        }
      });
    }
  }
}

main().catch((error: unknown) => {
  say(`ERROR ${String(error)}`);
  process.exit(2);
});
