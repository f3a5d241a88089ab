import { execFileSync } from "node:child_process";
import * as path from "node:path";

const SCRIPT = path.resolve(__dirname, "..", "..", "native", "sanitize.sh");

// The pure C++ core with its own test driver, built without Node under the
// sanitizers; a report from any of them fails the run with a non-zero exit.
describe("native core under sanitizers", () => {
  it.each(["address", "thread"])(
    "passes its test driver under the %s sanitizer",
    (mode) => {
      const out = execFileSync("bash", [SCRIPT, mode], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      });
      expect(out.trim().split("\n").pop()).toBe("core_test: all checks passed");
    },
    120_000,
  );
});
