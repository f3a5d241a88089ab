import * as path from "node:path";
import { scriptsIn, transpileWithImports } from "../helpers/transpile";

const ROOT = path.resolve(__dirname, "..", "..");

/**
 * Child processes and worker threads cannot load TypeScript, so the scripts under
 * test/store/children and every module they reach by relative import (the store facade,
 * and what it imports, e.g. src/errors.ts) are transpiled into `outDir`.
 */
export function transpileForChildren(outDir: string): { script: (name: string) => string } {
  transpileWithImports(outDir, scriptsIn(path.join("test", "store", "children")));
  return { script: (name: string) => path.join(outDir, "test", "store", "children", `${name}.js`) };
}

/** Absolute path of the built addon, handed to children through KVPARK_STORE_ADDON. */
export const ADDON_PATH = path.join(ROOT, "native", "build", "Release", "kvpark_store.node");
