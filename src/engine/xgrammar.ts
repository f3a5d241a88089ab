/**
 * Loads @mlc-ai/web-xgrammar (xgrammar compiled to WebAssembly) into the engine process.
 *
 * The package says `"type": "module"` but ships a UMD bundle that reads `require` and `__filename`
 * and imports Node's `module` dynamically, so neither `require()` nor `import()` loads it from
 * kvpark's CommonJS build. The bundle is evaluated here as the CommonJS module it really is, with
 * its one `import('module')` turned into a `require` and its console routed to a sink: xgrammar
 * prints `[FATAL] ...` before aborting on a schema it cannot convert, and that line is the only
 * account of what was wrong, so the constraint compiler turns it into the client's error message.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import * as vm from "node:vm";

/** The part of xgrammar's API kvpark uses (see the package's lib/xgrammar.d.ts). */
export interface XgTokenizerInfo {
  getVocabSize(): number;
  dispose(): void;
}

export interface XgCompiledGrammar {
  /** The embind handle; GrammarMatcher's constructor takes it. */
  handle: unknown;
  dispose(): void;
}

export interface XgGrammar {
  toString(): string;
  dispose(): void;
}

export interface XgCompiler {
  compileJSONSchema(
    schema: string,
    anyWhitespace?: boolean,
    indent?: number,
    separators?: [string, string],
    strictMode?: boolean,
  ): Promise<XgCompiledGrammar>;
  compileGrammar(ebnf: string, rootRule?: string): Promise<XgCompiledGrammar>;
  dispose(): void;
}

export interface XgMatcher {
  acceptToken(id: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  dispose(): void;
}

export interface Xgrammar {
  TokenizerInfo: {
    createTokenizerInfo(
      encodedVocab: string[],
      vocabType: "raw" | "byte_level" | "byte_fallback",
      prependSpaceInTokenization: boolean,
      vocabSize: number,
      stopTokenIds?: number[],
    ): Promise<XgTokenizerInfo>;
  };
  GrammarCompiler: {
    createGrammarCompiler(info: XgTokenizerInfo, cacheEnabled?: boolean): Promise<XgCompiler>;
  };
  Grammar: {
    fromJSONSchema(
      schema: string,
      anyWhitespace?: boolean,
      indent?: number,
      separators?: [string, string],
      strictMode?: boolean,
    ): Promise<XgGrammar>;
  };
  GrammarMatcher: {
    /**
     * Reads only `handle` and `tokenizerInfo().getVocabSize()` of the grammar it is given. (The
     * package's CompiledGrammar.tokenizerInfo() makes a new embind handle that is never deleted;
     * the constraint compiler passes an object whose tokenizerInfo() allocates nothing.)
     */
    createGrammarMatcher(grammar: {
      handle: unknown;
      tokenizerInfo(): { getVocabSize(): number };
    }): Promise<XgMatcher>;
  };
}

const PACKAGE = "@mlc-ai/web-xgrammar";
const DYNAMIC_IMPORT = "await import('module')";

/** Where xgrammar's console output goes; replaceable so that a compile can capture it. */
export const xgrammarConsole = {
  sink: (line: string): void => void process.stderr.write(`xgrammar: ${line}\n`),
};

let loaded: Xgrammar | undefined;

/** The xgrammar API, loaded on first use (its WebAssembly instance starts on the first call into it). */
export function xgrammar(): Xgrammar {
  if (loaded) return loaded;
  const file = require.resolve(`${PACKAGE}/lib/index.js`);
  const source = readFileSync(file, "utf8");
  if (source.split(DYNAMIC_IMPORT).length !== 2) {
    throw new Error(`${PACKAGE}: unexpected bundle (no single ${DYNAMIC_IMPORT}); its version is pinned`);
  }
  const wrapped =
    "(function (exports, require, module, __filename, __dirname, console) {" +
    source.replace(DYNAMIC_IMPORT, "require('module')") +
    "\n})";
  const fn = vm.runInThisContext(wrapped, { filename: file }) as (...args: unknown[]) => void;
  const mod = { exports: {} as Record<string, unknown> };
  const print = (...args: unknown[]) => xgrammarConsole.sink(args.map(String).join(" "));
  const sandboxConsole = { log: print, error: print, warn: print, info: print, debug: print };
  fn(mod.exports, createRequire(file), mod, file, path.dirname(file), sandboxConsole);
  loaded = mod.exports as unknown as Xgrammar;
  return loaded;
}
