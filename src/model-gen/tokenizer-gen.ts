/**
 * Generates the tokenizer files of the embedded default model: a byte-level BPE in the layout Qwen2.5
 * ships (tokenizer.json + tokenizer_config.json), with merges learned from the training corpus (corpus.txt).
 *
 * Everything here is deterministic: model fingerprints hash the written files, so the same options
 * must always produce the same bytes.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { trainingCorpus } from "./corpus";

/** Options of {@link buildTokenizerFiles}. */
export interface TokenizerGenOptions {
  /**
   * Regular (non-special) tokens: the 256 byte tokens plus the learned merges. The embedded corpus
   * supports a little over 9,000; a larger value is refused with a RangeError that names the limit.
   */
  vocabSize: number;
  /**
   * Breaks ties between equally frequent pairs. Omitted or 0 keeps the Hugging Face trainer's rule
   * (lowest pair ids first); any other value gives a different, equally valid vocabulary.
   */
  seed?: number;
  /** `model_max_length` written to tokenizer_config.json. */
  modelMaxLength?: number;
}

/** Ids of the added tokens; they follow the regular vocabulary. */
export interface GeneratedSpecialTokens {
  endOfText: number;
  imStart: number;
  imEnd: number;
  /** `<tool_call>` and `</tool_call>`: added but not special, as in Qwen2.5, so they stay in decoded text. */
  toolCallStart: number;
  toolCallEnd: number;
}

/** The generated files as JSON values, plus the facts a model generator needs for config.json. */
export interface GeneratedTokenizerFiles {
  tokenizerJson: object;
  tokenizerConfig: object;
  specialTokens: GeneratedSpecialTokens;
  /** Regular plus added tokens: the smallest `vocab_size` a model using this tokenizer can have. */
  totalVocabSize: number;
}

/** Qwen2's pre-tokenizer split pattern (Oniguruma syntax, as tokenizer.json stores it). */
export const QWEN2_SPLIT_PATTERN = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

/** Default system prompt of the generated chat template. */
export const DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant.";

/**
 * Qwen2.5's chat template (ChatML, tools and Hermes-style `<tool_call>` calls included), word for word
 * but for the default system prompt, which is neutral because the embedded model is not Qwen.
 */
export const CHATML_TEMPLATE =
  "{%- if tools %}\n" +
  "    {{- '<|im_start|>system\\n' }}\n" +
  "    {%- if messages[0]['role'] == 'system' %}\n" +
  "        {{- messages[0]['content'] }}\n" +
  "    {%- else %}\n" +
  `        {{- '${DEFAULT_SYSTEM_PROMPT}' }}\n` +
  "    {%- endif %}\n" +
  '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n' +
  "    {%- for tool in tools %}\n" +
  '        {{- "\\n" }}\n' +
  "        {{- tool | tojson }}\n" +
  "    {%- endfor %}\n" +
  '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n' +
  "{%- else %}\n" +
  "    {%- if messages[0]['role'] == 'system' %}\n" +
  "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n" +
  "    {%- else %}\n" +
  `        {{- '<|im_start|>system\\n${DEFAULT_SYSTEM_PROMPT}<|im_end|>\\n' }}\n` +
  "    {%- endif %}\n" +
  "{%- endif %}\n" +
  "{%- for message in messages %}\n" +
  '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}\n' +
  "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n" +
  '    {%- elif message.role == "assistant" %}\n' +
  "        {{- '<|im_start|>' + message.role }}\n" +
  "        {%- if message.content %}\n" +
  "            {{- '\\n' + message.content }}\n" +
  "        {%- endif %}\n" +
  "        {%- for tool_call in message.tool_calls %}\n" +
  "            {%- if tool_call.function is defined %}\n" +
  "                {%- set tool_call = tool_call.function %}\n" +
  "            {%- endif %}\n" +
  '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n' +
  "            {{- tool_call.name }}\n" +
  '            {{- \'", "arguments": \' }}\n' +
  "            {{- tool_call.arguments | tojson }}\n" +
  "            {{- '}\\n</tool_call>' }}\n" +
  "        {%- endfor %}\n" +
  "        {{- '<|im_end|>\\n' }}\n" +
  '    {%- elif message.role == "tool" %}\n' +
  '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n' +
  "            {{- '<|im_start|>user' }}\n" +
  "        {%- endif %}\n" +
  "        {{- '\\n<tool_response>\\n' }}\n" +
  "        {{- message.content }}\n" +
  "        {{- '\\n</tool_response>' }}\n" +
  '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n' +
  "            {{- '<|im_end|>\\n' }}\n" +
  "        {%- endif %}\n" +
  "    {%- endif %}\n" +
  "{%- endfor %}\n" +
  "{%- if add_generation_prompt %}\n" +
  "    {{- '<|im_start|>assistant\\n' }}\n" +
  "{%- endif %}\n";

const END_OF_TEXT = "<|endoftext|>";
const IM_START = "<|im_start|>";
const IM_END = "<|im_end|>";
const TOOL_CALL_START = "<tool_call>";
const TOOL_CALL_END = "</tool_call>";
/** Added tokens in id order, with whether each is special (skipped when decoding without specials). */
const ADDED_TOKENS = [
  [END_OF_TEXT, true],
  [IM_START, true],
  [IM_END, true],
  [TOOL_CALL_START, false],
  [TOOL_CALL_END, false],
] as const;

const BYTE_TOKENS = 256;
const DEFAULT_MODEL_MAX_LENGTH = 32768;
// Pair keys pack two token ids into one number; ids stay far below 2^20 for any sensible vocabulary.
const PAIR_ID_LIMIT = 1 << 20;

/**
 * GPT-2's reversible byte-to-character map, in GPT-2's id order: printable Latin-1 bytes map to
 * themselves and come first, the remaining bytes map to U+0100 upwards. Byte-level BPE vocabularies
 * (GPT-2, Llama 3, Qwen2) give these 256 characters ids 0..255 in exactly this order.
 */
export function byteLevelAlphabet(): { byte: number; char: string }[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const alphabet = printable.map((b) => ({ byte: b, char: String.fromCharCode(b) }));
  let next = 0;
  for (let b = 0; b < BYTE_TOKENS; b++) {
    if (!printable.includes(b)) alphabet.push({ byte: b, char: String.fromCharCode(BYTE_TOKENS + next++) });
  }
  return alphabet;
}

function tokenizerSkeleton(vocab: Record<string, number>, merges: string[], addedTokens: object[]) {
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: { type: "NFC" },
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: QWEN2_SPLIT_PATTERN }, behavior: "Isolated", invert: false },
        byteLevel,
      ],
    },
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/**
 * Word frequencies of the corpus after normalisation and pre-tokenisation. The tokenizer library itself
 * does the splitting, so training sees exactly the pieces that encoding will later see.
 */
function countWords(byteVocab: Record<string, number>): Map<string, number> {
  const splitter = new Tokenizer(tokenizerSkeleton(byteVocab, [], []), {});
  const normalize = splitter.normalizer;
  const preTokenize = splitter.pre_tokenizer;
  if (normalize === null || preTokenize === null) throw new Error("tokenizer skeleton lost its normalizer");
  const counts = new Map<string, number>();
  for (const document of trainingCorpus()) {
    for (const word of preTokenize(normalize(document))) counts.set(word, (counts.get(word) ?? 0) + 1);
  }
  return counts;
}

/** A 32-bit integer mix (Murmur3's finaliser) so that a seed reorders ties without favouring any id. */
function mix32(x: number): number {
  let h = x >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Max-heap of candidate merges ordered by count, then tie rank, then pair key (all but count ascending).
 * Entries go stale when a pair's count changes; the trainer pushes a fresh entry and drops stale ones
 * when they surface, which keeps every update O(log n) instead of rescanning all pairs per merge.
 */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly ranks: number[] = [];
  private readonly keys: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  push(count: number, rank: number, key: number): void {
    this.counts.push(count);
    this.ranks.push(rank);
    this.keys.push(key);
    let i = this.keys.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** Removes the best entry and returns its [count, key]. */
  pop(): [number, number] {
    const top: [number, number] = [this.counts[0], this.keys[0]];
    const last = this.keys.length - 1;
    this.swap(0, last);
    this.counts.pop();
    this.ranks.pop();
    this.keys.pop();
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let best = i;
      if (left < last && this.before(left, best)) best = left;
      if (right < last && this.before(right, best)) best = right;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
    return top;
  }

  private before(a: number, b: number): boolean {
    if (this.counts[a] !== this.counts[b]) return this.counts[a] > this.counts[b];
    if (this.ranks[a] !== this.ranks[b]) return this.ranks[a] < this.ranks[b];
    return this.keys[a] < this.keys[b];
  }

  private swap(a: number, b: number): void {
    [this.counts[a], this.counts[b]] = [this.counts[b], this.counts[a]];
    [this.ranks[a], this.ranks[b]] = [this.ranks[b], this.ranks[a]];
    [this.keys[a], this.keys[b]] = [this.keys[b], this.keys[a]];
  }
}

/**
 * Learns BPE merges the way the Hugging Face trainer does: repeatedly merge the most frequent adjacent
 * pair (ties: lowest pair ids, or a seeded order), a merge whose result already exists reuses that
 * token, and stop once `vocabSize` tokens exist.
 */
function learnMerges(
  wordCounts: Map<string, number>,
  alphabet: readonly string[],
  vocabSize: number,
  seed: number,
): { tokens: string[]; merges: string[] } {
  const tokens = [...alphabet];
  const tokenIds = new Map(tokens.map((t, i) => [t, i]));
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [word, count] of wordCounts) {
    words.push(Array.from(word, (ch) => tokenIds.get(ch) as number));
    freqs.push(count);
  }

  const rankOf = (key: number): number =>
    seed === 0
      ? key
      : mix32(Math.imul(Math.floor(key / PAIR_ID_LIMIT), 0x9e3779b1) ^ mix32((key % PAIR_ID_LIMIT) ^ seed));
  const pairCounts = new Map<number, number>();
  // Words that contained a pair at some point; entries may be stale and are re-checked on use.
  const pairWords = new Map<number, number[]>();
  const addPairs = (w: number, sign: 1 | -1, delta: Map<number, number>, index: boolean): void => {
    const syms = words[w];
    for (let i = 0; i + 1 < syms.length; i++) {
      const key = syms[i] * PAIR_ID_LIMIT + syms[i + 1];
      delta.set(key, (delta.get(key) ?? 0) + sign * freqs[w]);
      if (index) {
        const list = pairWords.get(key);
        if (list === undefined) pairWords.set(key, [w]);
        else if (list[list.length - 1] !== w) list.push(w);
      }
    }
  };
  const applyDelta = (delta: Map<number, number>, heap: PairHeap): void => {
    for (const [key, change] of delta) {
      if (change === 0) continue;
      const count = (pairCounts.get(key) ?? 0) + change;
      if (count > 0) {
        pairCounts.set(key, count);
        heap.push(count, rankOf(key), key);
      } else {
        pairCounts.delete(key);
      }
    }
  };

  const heap = new PairHeap();
  const initial = new Map<number, number>();
  for (let w = 0; w < words.length; w++) addPairs(w, 1, initial, true);
  applyDelta(initial, heap);

  const merges: string[] = [];
  const visited = new Int32Array(words.length).fill(-1);
  while (tokens.length < vocabSize) {
    let best = -1;
    while (heap.size > 0) {
      const [count, key] = heap.pop();
      if (pairCounts.get(key) === count) {
        best = key;
        break;
      }
    }
    if (best < 0) {
      throw new RangeError(
        `vocabSize ${vocabSize} is more than the embedded corpus supports (${tokens.length} tokens)`,
      );
    }
    const left = Math.floor(best / PAIR_ID_LIMIT);
    const right = best % PAIR_ID_LIMIT;
    const merged = tokens[left] + tokens[right];
    let mergedId = tokenIds.get(merged);
    if (mergedId === undefined) {
      mergedId = tokens.length;
      tokens.push(merged);
      tokenIds.set(merged, mergedId);
    }
    merges.push(`${tokens[left]} ${tokens[right]}`);

    const delta = new Map<number, number>();
    for (const w of pairWords.get(best) ?? []) {
      if (visited[w] === merges.length) continue;
      visited[w] = merges.length;
      const syms = words[w];
      let present = false;
      for (let i = 0; i + 1 < syms.length && !present; i++)
        present = syms[i] === left && syms[i + 1] === right;
      if (!present) continue;
      addPairs(w, -1, delta, false);
      const out: number[] = [];
      for (let i = 0; i < syms.length; i++) {
        if (i + 1 < syms.length && syms[i] === left && syms[i + 1] === right) {
          out.push(mergedId);
          i++;
        } else {
          out.push(syms[i]);
        }
      }
      words[w] = out;
      addPairs(w, 1, delta, true);
    }
    pairWords.delete(best);
    applyDelta(delta, heap);
  }
  return { tokens, merges };
}

/** Builds tokenizer.json and tokenizer_config.json of a byte-level BPE learned from the embedded corpus. */
export function buildTokenizerFiles(opts: TokenizerGenOptions): GeneratedTokenizerFiles {
  const { vocabSize, seed = 0, modelMaxLength = DEFAULT_MODEL_MAX_LENGTH } = opts;
  if (
    !Number.isInteger(vocabSize) ||
    vocabSize < BYTE_TOKENS ||
    vocabSize > PAIR_ID_LIMIT - ADDED_TOKENS.length
  ) {
    throw new RangeError(
      `vocabSize must be an integer in [${BYTE_TOKENS}, ${PAIR_ID_LIMIT - ADDED_TOKENS.length}], got ${vocabSize}`,
    );
  }
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`seed must be an integer in [0, 2^32), got ${seed}`);
  }
  if (!Number.isInteger(modelMaxLength) || modelMaxLength <= 0) {
    throw new RangeError(`modelMaxLength must be a positive integer, got ${modelMaxLength}`);
  }

  const alphabet = byteLevelAlphabet().map((entry) => entry.char);
  const byteVocab = Object.fromEntries(alphabet.map((ch, id) => [ch, id]));
  const { tokens, merges } = learnMerges(countWords(byteVocab), alphabet, vocabSize, seed);
  const vocab = Object.fromEntries(tokens.map((t, id) => [t, id]));

  const addedTokens = ADDED_TOKENS.map(([content, special], i) => ({
    id: vocabSize + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special,
  }));
  const tokenizerJson = tokenizerSkeleton(vocab, merges, addedTokens);

  // Key order follows the files Qwen2.5 publishes; JSON.stringify keeps insertion order.
  const tokenizerConfig = {
    add_bos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: Object.fromEntries(
      addedTokens.map((t) => [
        String(t.id),
        {
          content: t.content,
          lstrip: false,
          normalized: false,
          rstrip: false,
          single_word: false,
          special: t.special,
        },
      ]),
    ),
    additional_special_tokens: [IM_START, IM_END],
    bos_token: null,
    chat_template: CHATML_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: IM_END,
    errors: "replace",
    model_max_length: modelMaxLength,
    pad_token: END_OF_TEXT,
    split_special_tokens: false,
    tokenizer_class: "Qwen2Tokenizer",
    unk_token: null,
  };

  return {
    tokenizerJson,
    tokenizerConfig,
    specialTokens: {
      endOfText: vocabSize,
      imStart: vocabSize + 1,
      imEnd: vocabSize + 2,
      toolCallStart: vocabSize + 3,
      toolCallEnd: vocabSize + 4,
    },
    totalVocabSize: vocabSize + ADDED_TOKENS.length,
  };
}

/** The exact bytes written for a generated file; shared with anything that hashes them. */
export function serializeTokenizerFile(value: object): string {
  return JSON.stringify(value, null, 2) + "\n";
}

/** Writes tokenizer.json and tokenizer_config.json into `dir` (created if missing). */
export function writeTokenizerFiles(dir: string, opts: TokenizerGenOptions): GeneratedTokenizerFiles {
  const files = buildTokenizerFiles(opts);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "tokenizer.json"), serializeTokenizerFile(files.tokenizerJson));
  writeFileSync(path.join(dir, "tokenizer_config.json"), serializeTokenizerFile(files.tokenizerConfig));
  return files;
}
