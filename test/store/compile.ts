import * as fs from "node:fs";
import * as path from "node:path";
import * as ts from "typescript";

const ROOT = path.resolve(__dirname, "..", "..");

/**
 * Child processes and worker threads cannot load TypeScript, so the store facade
 * and the scripts under test/store/children are transpiled into `outDir` with the
 * same relative layout; imports between them keep working.
 */
export function transpileForChildren(outDir: string): { script: (name: string) => string } {
  const sources = [
    ...fs.readdirSync(path.join(ROOT, "src", "store")).map((name) => path.join("src", "store", name)),
    ...fs
      .readdirSync(path.join(ROOT, "test", "store", "children"))
      .map((name) => path.join("test", "store", "children", name)),
  ].filter((file) => file.endsWith(".ts") && !file.endsWith(".spec.ts"));
  for (const file of sources) {
    const output = ts.transpileModule(fs.readFileSync(path.join(ROOT, file), "utf8"), {
      compilerOptions: {
        module: ts.ModuleKind.CommonJS,
        target: ts.ScriptTarget.ES2022,
        esModuleInterop: true,
      },
      fileName: file,
    });
    const target = path.join(outDir, file.replace(/\.ts$/, ".js"));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, output.outputText);
  }
  return { script: (name: string) => path.join(outDir, "test", "store", "children", `${name}.js`) };
}

/** Absolute path of the built addon, handed to children through KVPARK_STORE_ADDON. */
export const ADDON_PATH = path.join(ROOT, "native", "build", "Release", "kvpark_store.node");
