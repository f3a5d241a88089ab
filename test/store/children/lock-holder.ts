// Holds a store open until its stdin closes: the parent checks what a second
// opener is told about the holder. argv: dir
import * as fs from "node:fs";

import { openStore } from "../../../src/store";

async function main(): Promise<void> {
  const store = await openStore(process.argv[2], {
    bytesMax: 64 << 20,
    fsync: "batch",
    segmentBytes: 1 << 20,
  });
  fs.writeSync(1, "READY\n");
  process.stdin.resume();
  process.stdin.on("end", () => {
    void store.close().then(() => process.exit(0));
  });
}

main().catch((error: unknown) => {
  fs.writeSync(1, `ERROR ${String(error)}\n`);
  process.exit(2);
});
