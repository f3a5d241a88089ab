import * as fs from "node:fs";
import * as path from "node:path";
import * as ts from "typescript";

const ROOT = path.resolve(__dirname, "..", "..");

/** Relative imports of a TypeScript file, resolved to repository-relative .ts paths. */
function localImports(file: string): string[] {
  const info = ts.preProcessFile(fs.readFileSync(path.join(ROOT, file), "utf8"), true, true);
  return info.importedFiles
    .map((ref) => ref.fileName)
    .filter((name) => name.startsWith("."))
    .map((name) => path.join(path.dirname(file), name.replace(/\.js$/, "")))
    .flatMap((base) => [`${base}.ts`, path.join(base, "index.ts")])
    .filter((candidate) => fs.existsSync(path.join(ROOT, candidate)));
}

/**
 * Child processes and worker threads cannot load TypeScript, so the scripts under
 * test/store/children and every module they reach by relative import (the store facade,
 * and what it imports, e.g. src/errors.ts) are transpiled into `outDir` with the same
 * relative layout; imports between them keep working.
 */
export function transpileForChildren(outDir: string): { script: (name: string) => string } {
  const pending = fs
    .readdirSync(path.join(ROOT, "test", "store", "children"))
    .filter((name) => name.endsWith(".ts"))
    .map((name) => path.join("test", "store", "children", name));
  const done = new Set<string>();
  while (pending.length > 0) {
    const file = pending.pop() as string;
    if (done.has(file)) continue;
    done.add(file);
    pending.push(...localImports(file));
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
