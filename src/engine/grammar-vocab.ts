/**
 * The vocabulary as xgrammar needs it: every token id's string in the tokenizer's own encoding and
 * the encoding's kind, read from the model's tokenizer.json the way xgrammar's Hugging Face loader
 * reads it (the decoder says byte-level, byte-fallback or raw).
 */
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { KvparkError } from "../errors.js";

export type VocabType = "raw" | "byte_level" | "byte_fallback";

export interface GrammarVocab {
  /** Token strings by id, as tokenizer.json stores them; "" for ids no text can produce (special tokens). */
  encoded: string[];
  type: VocabType;
  /** Whether the tokenizer puts a space in front of the text (SentencePiece's "▁" prefix). */
  prependSpace: boolean;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** The first ByteLevel or ByteFallback decoder, directly or in a Sequence, decides; else raw. */
function vocabType(tokenizer: Json): VocabType {
  const decoder = tokenizer.decoder;
  if (!isObject(decoder)) return "raw";
  const decoders =
    decoder.type === "Sequence" && Array.isArray(decoder.decoders) ? decoder.decoders : [decoder];
  for (const d of decoders) {
    if (isObject(d) && d.type === "ByteLevel") return "byte_level";
    if (isObject(d) && d.type === "ByteFallback") return "byte_fallback";
  }
  return "raw";
}

function prependsSpace(tokenizer: Json): boolean {
  const n = tokenizer.normalizer;
  const normalizers = isObject(n)
    ? n.type === "Sequence" && Array.isArray(n.normalizers)
      ? n.normalizers
      : [n]
    : [];
  if (normalizers.some((x) => isObject(x) && x.type === "Prepend" && x.prepend === "\u2581")) return true;
  const p = tokenizer.pre_tokenizer;
  return (
    isObject(p) && p.type === "Metaspace" && (p.prepend_scheme === "always" || p.prepend_scheme === "first")
  );
}

/** GPT-2's byte-to-character map (the byte-level alphabet): printable Latin-1 maps to itself. */
function byteLevelChars(): string[] {
  const chars: string[] = new Array(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + next++);
  }
  return chars;
}

/**
 * Reads `dir`/tokenizer.json. Special added tokens get "" (xgrammar never allows a token whose text
 * is empty, and kvpark's detokenizer drops them, so they must not stand for text the grammar counts);
 * other added tokens are stored as raw text, so in a byte-level vocabulary they are re-encoded with
 * the byte-level alphabet like every regular token.
 */
export function readGrammarVocab(dir: string): GrammarVocab {
  const file = path.join(dir, "tokenizer.json");
  let tokenizer: unknown;
  try {
    tokenizer = JSON.parse(readFileSync(file, "utf8"));
  } catch (cause) {
    throw new KvparkError("MODEL_INVALID", `${file}: cannot be read for constrained decoding`, { cause });
  }
  if (!isObject(tokenizer) || !isObject(tokenizer.model)) {
    throw new KvparkError("MODEL_INVALID", `${file}: no tokenizer model`);
  }
  const encoded: string[] = [];
  const vocab = tokenizer.model.vocab;
  if (Array.isArray(vocab)) {
    // Unigram: [piece, score] pairs in id order.
    vocab.forEach((entry, id) => (encoded[id] = Array.isArray(entry) ? String(entry[0]) : ""));
  } else if (isObject(vocab)) {
    for (const [token, id] of Object.entries(vocab)) if (typeof id === "number") encoded[id] = token;
  }
  const type = vocabType(tokenizer);
  const alphabet = type === "byte_level" ? byteLevelChars() : undefined;
  const added = Array.isArray(tokenizer.added_tokens) ? tokenizer.added_tokens : [];
  for (const t of added) {
    if (!isObject(t) || typeof t.id !== "number" || typeof t.content !== "string") continue;
    if (t.special === true) encoded[t.id] = "";
    else if (alphabet)
      encoded[t.id] = Array.from(Buffer.from(t.content, "utf8"), (b) => alphabet[b]).join("");
    else encoded[t.id] = t.content;
  }
  for (let id = 0; id < encoded.length; id++) encoded[id] ??= "";
  return { encoded, type, prependSpace: prependsSpace(tokenizer) };
}
