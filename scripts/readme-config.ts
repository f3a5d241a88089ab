// Rewrites the README's configuration table from the option table in src/config-options.ts
// (`npm run readme`); test/foundation/readme.spec.ts fails when the two differ.
import * as fs from "node:fs";
import * as path from "node:path";
import { configMarkdown } from "../src/config";

const readme = path.resolve(__dirname, "../../README.md");
const text = fs.readFileSync(readme, "utf8");
const table = /(<!-- config-table:start -->\n)[\s\S]*?(\n<!-- config-table:end -->)/;
if (!table.test(text)) throw new Error("README.md has no config-table markers");
fs.writeFileSync(
  readme,
  text.replace(table, (_, start: string, end: string) => start + configMarkdown() + end),
);
