/**
 * The training text of the generated tokenizer's byte-level BPE: the documents of corpus.txt (its
 * opening note says what the text is for and how the file is laid out).
 *
 * The file sits next to this module in src/, and `npm run build` copies it next to the compiled
 * module in dist/ (tsc copies no data files); compiled code without that copy (a bare `tsc`, another
 * outDir) falls back to the source tree it was compiled from.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** The data file's name, and its folder relative to the package root. */
export const CORPUS_FILE = "corpus.txt";
const SOURCE_DIR = path.join("src", "model-gen");

/** A document's marker line: `=== NAME ===`. */
const MARKER = /^=== [A-Z][A-Z0-9_]* ===\n/gm;

/** Where corpus.txt is: next to this module, else in the source tree above the compiled module. */
export function corpusPath(): string {
  const beside = path.join(__dirname, CORPUS_FILE);
  if (fs.existsSync(beside)) return beside;
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, SOURCE_DIR, CORPUS_FILE);
    if (fs.existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) break;
  }
  throw new Error(
    `${CORPUS_FILE} is missing: looked in ${__dirname} and in ${SOURCE_DIR} of every folder above it; ` +
      "run `npm run build`, which copies it next to the compiled code",
  );
}

/**
 * The documents of a corpus file, in file order. Line endings are read as LF whatever the checkout
 * wrote (as TypeScript reads a template literal), so a CRLF checkout trains the same vocabulary.
 */
export function parseCorpus(text: string): string[] {
  const lf = text.replace(/\r\n?/g, "\n");
  const starts = [...lf.matchAll(MARKER)];
  if (starts.length === 0) throw new Error(`${CORPUS_FILE} has no document (no "=== NAME ===" line)`);
  return starts.map((m, i) => lf.slice(m.index + m[0].length, starts[i + 1]?.index ?? lf.length));
}

let documents: readonly string[] | undefined;

/** The training documents, read once on first use (the engine never needs them unless it generates). */
export function trainingCorpus(): readonly string[] {
  documents ??= Object.freeze(parseCorpus(fs.readFileSync(corpusPath(), "utf8")));
  return documents;
}
