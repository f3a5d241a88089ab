import * as fs from "node:fs";
import * as path from "node:path";
import { configMarkdown } from "../../src/config";
import { ROOT } from "../helpers/server";

describe("README", () => {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");

  it("has the configuration table the code defines", () => {
    const table = /<!-- config-table:start -->\n([\s\S]*?)\n<!-- config-table:end -->/.exec(readme)?.[1];
    expect(table).toBe(configMarkdown());
  });

  it("names the test command that .ci/run calls", () => {
    expect(readme).toContain("npm test");
    expect(fs.readFileSync(path.join(ROOT, ".ci/run"), "utf8")).toMatch(/^npm test$/m);
  });
});
