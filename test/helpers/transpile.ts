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
 * Child processes and worker threads cannot load TypeScript: transpiles `entries` (repository-relative
 * .ts paths) and every module they reach by relative import into `outDir`, with the same layout, so
 * that imports between them keep working. Packages resolve through NODE_PATH.
 */
export function transpileWithImports(outDir: string, entries: readonly string[]): void {
  const pending = [...entries];
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
}

/** The .ts files of a repository folder, spec files left out. */
export function scriptsIn(dir: string): string[] {
  return fs
    .readdirSync(path.join(ROOT, dir))
    .filter((name) => name.endsWith(".ts") && !name.endsWith(".spec.ts"))
    .map((name) => path.join(dir, name));
}
