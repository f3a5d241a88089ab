import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import {
  buildTokenizerFiles,
  byteLevelAlphabet,
  CHATML_TEMPLATE,
  GeneratedTokenizerFiles,
  serializeTokenizerFile,
  writeTokenizerFiles,
} from "../../src/model-gen/tokenizer-gen";
import { corpusPath, parseCorpus, trainingCorpus } from "../../src/model-gen/corpus";
import { IncrementalDetokenizer, ModelTokenizer, TokenizerError } from "../../src/model/tokenizer";

const VOCAB = 4000;
const END_OF_TEXT = VOCAB;
const IM_START = VOCAB + 1;
const IM_END = VOCAB + 2;
const TOOL_CALL = VOCAB + 3;
const TOOL_CALL_END = VOCAB + 4;

const MULTILINGUAL = [
  "Hello, world! The cache keeps keys and values.",
  "Größere Modelle brauchen mehr Speicher: Äpfel, Öl, Übermut, ß.",
  "Où se trouve la gare ? À bientôt, garçon ! Ça coûte 12,50 €.",
  "缓存会保存每个请求的注意力键和值。",
  "昨日は友達と一緒に京都へ行きました。ありがとうございます！",
  "안녕하세요, 만나서 반갑습니다.",
  "Привет, мир! Ελληνικά. العربية. हिन्दी.",
  "Emoji: 👍🏽 🇩🇪 👨‍👩‍👧‍👦 🧑‍🚀 ❤️ 😀😂🤣 — and a zero-width joiner.",
  "def f(x):\n\treturn x ** 2  # tabs, spaces   and\r\nCRLF\n\n\n",
  "  leading and trailing spaces  ",
  "\u0000\u0001\u007f control bytes, U+FFFD \uFFFD itself, and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 astral letters",
];

const tmpDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), "kvpark-tok-"));
  tmpDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of tmpDirs) rmSync(dir, { recursive: true, force: true });
});

let files: GeneratedTokenizerFiles;
let qwenDir: string;
let tok: ModelTokenizer;
beforeAll(() => {
  qwenDir = tempDir();
  files = writeTokenizerFiles(qwenDir, { vocabSize: VOCAB });
  tok = ModelTokenizer.fromDir(qwenDir);
});

/** The id of the base token that stands for one raw byte. */
function byteId(byte: number): number {
  return byteLevelAlphabet().findIndex((entry) => entry.byte === byte);
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error("expected an error");
}

function writeModelDir(json: Record<string, unknown>): string {
  const dir = tempDir();
  for (const [name, value] of Object.entries(json)) {
    writeFileSync(path.join(dir, name), typeof value === "string" ? value : JSON.stringify(value));
  }
  return dir;
}

describe("buildTokenizerFiles", () => {
  it("writes the same bytes for the same options", () => {
    const a = tempDir();
    const b = tempDir();
    writeTokenizerFiles(a, { vocabSize: VOCAB });
    writeTokenizerFiles(b, { vocabSize: VOCAB });
    for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
      expect(readFileSync(path.join(a, name)).equals(readFileSync(path.join(b, name)))).toBe(true);
      expect(readFileSync(path.join(a, name)).equals(readFileSync(path.join(qwenDir, name)))).toBe(true);
    }
  });

  it("gives a different but equally sized vocabulary for another seed", () => {
    const seeded = buildTokenizerFiles({ vocabSize: VOCAB, seed: 7 });
    const model = (f: GeneratedTokenizerFiles) => (f.tokenizerJson as { model: { merges: string[] } }).model;
    expect(model(seeded).merges).toHaveLength(VOCAB - 256);
    expect(model(seeded).merges).not.toEqual(model(files).merges);
    expect(serializeTokenizerFile(seeded.tokenizerJson)).toBe(
      serializeTokenizerFile(buildTokenizerFiles({ vocabSize: VOCAB, seed: 7 }).tokenizerJson),
    );
  });

  it("lays out ids like GPT-2 and Qwen2: 256 byte tokens, merges, then added tokens", () => {
    expect(files.specialTokens).toEqual({
      endOfText: 4000,
      imStart: 4001,
      imEnd: 4002,
      toolCallStart: 4003,
      toolCallEnd: 4004,
    });
    expect(files.totalVocabSize).toBe(4005);
    expect(tok.vocabSize).toBe(4005);
    expect(tok.tokenToId("!")).toBe(0);
    expect(tok.tokenToId("Ċ")).toBe(198);
    expect(tok.tokenToId("Ġ")).toBe(220);
    expect(tok.tokenToId("<|endoftext|>")).toBe(4000);
    expect(tok.tokenToId("<|im_start|>")).toBe(4001);
    expect(tok.tokenToId("<|im_end|>")).toBe(4002);
    expect(tok.tokenToId("<tool_call>")).toBe(4003);
    expect(tok.tokenToId("</tool_call>")).toBe(4004);
    const json = files.tokenizerJson as { model: { merges: string[]; vocab: Record<string, number> } };
    expect(json.model.merges.slice(0, 5)).toEqual(["ã ģ", "Ġ t", "Ġ Ġ", "e r", "Ġ a"]);
    expect(Object.keys(json.model.vocab)).toHaveLength(4000);
  });

  it("writes a Qwen2.5-style tokenizer_config.json", () => {
    const config = files.tokenizerConfig as Record<string, unknown>;
    expect(config).toMatchObject({
      bos_token: null,
      eos_token: "<|im_end|>",
      pad_token: "<|endoftext|>",
      clean_up_tokenization_spaces: false,
      model_max_length: 32768,
      chat_template: CHATML_TEMPLATE,
    });
    expect(config.added_tokens_decoder).toEqual({
      "4000": {
        content: "<|endoftext|>",
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: true,
      },
      "4001": {
        content: "<|im_start|>",
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: true,
      },
      "4002": {
        content: "<|im_end|>",
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: true,
      },
      // Added but not special, as in Qwen2.5: they stay in text decoded without special tokens.
      "4003": {
        content: "<tool_call>",
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: false,
      },
      "4004": {
        content: "</tool_call>",
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: false,
      },
    });
  });

  it("refuses vocabularies the corpus cannot fill", () => {
    expect(() => buildTokenizerFiles({ vocabSize: 100 })).toThrow(
      new RangeError("vocabSize must be an integer in [256, 1048571], got 100"),
    );
    expect(() => buildTokenizerFiles({ vocabSize: 20000 })).toThrow(
      new RangeError("vocabSize 20000 is more than the embedded corpus supports (9275 tokens)"),
    );
  });

  it("writes the pinned tokenizer.json of the generated presets", () => {
    // tokenizer.json of the tiny (512) and small / qwen2.5-0.5b (8192) presets. Every generated model's
    // fingerprint hashes this file, so a change to corpus.txt or the trainer is a format change.
    const sha256 = (vocabSize: number) =>
      createHash("sha256")
        .update(serializeTokenizerFile(buildTokenizerFiles({ vocabSize }).tokenizerJson))
        .digest("hex");
    expect(sha256(512)).toBe("411b20051a1560fafe69aa5113a24b22ddd70fe5a000c4bd33af8cb36664dab4");
    expect(sha256(8192)).toBe("2753599483b8908b6799db973196c856200c395b3220223f521567c8dec26eb9");
  });

  it("reads the same corpus whatever line endings the checkout wrote", () => {
    const text = readFileSync(corpusPath(), "utf8");
    expect(trainingCorpus()).toEqual(parseCorpus(text));
    expect(trainingCorpus()).toHaveLength(20);
    expect(parseCorpus(text.replace(/\n/g, "\r\n"))).toEqual(trainingCorpus());
  });
});

describe("ModelTokenizer (Qwen style)", () => {
  it.each(MULTILINGUAL)("round-trips %j", (text) => {
    const ids = tok.encode(text);
    expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < VOCAB)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
  });

  it("compresses common text: merges are really learned", () => {
    const text = MULTILINGUAL[0];
    expect(tok.encode(text).length).toBeLessThan(Buffer.byteLength(text) / 3);
  });

  it("encodes fixed strings to fixed ids", () => {
    expect(tok.encode("Hello, world!")).toEqual([3400, 344, 11, 1005, 389, 0]);
    expect(tok.encode("The cache keeps keys and values.")).toEqual([1093, 577, 1072, 1466, 300, 1057, 13]);
    expect(tok.encode("Größe 😀")).toEqual([38, 3766, 959, 68, 530, 222]);
    expect(tok.encode("缓存会保存")).toEqual([2950, 565, 3032]);
    expect(tok.encode("def softmax(logits):")).toEqual([2771, 2978, 3248, 1000, 847]);
  });

  it("keeps special tokens whole and never adds a BOS", () => {
    const ids = tok.encode("<|im_start|>user\nhi<|im_end|><|endoftext|>");
    expect(ids).toEqual([IM_START, 916, 198, 1577, IM_END, END_OF_TEXT]);
    expect(tok.encode("x<|im_end|>y", { addSpecialTokens: false })).toEqual([
      tok.encode("x")[0],
      IM_END,
      tok.encode("y")[0],
    ]);
    // A near miss is ordinary text.
    expect(tok.encode("<|im_end|").includes(IM_END)).toBe(false);
    expect(tok.bosId).toBeUndefined();
    expect(tok.addsBos).toBe(false);
    expect(tok.isSpecial(IM_END)).toBe(true);
    expect(tok.isSpecial(0)).toBe(false);
  });

  it("drops special tokens only when asked, and never the tool-call markers", () => {
    const ids = tok.encode("<|im_start|>hi<|im_end|>");
    expect(tok.decode(ids)).toBe("<|im_start|>hi<|im_end|>");
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("hi");
    const call = tok.encode("<tool_call>\n{}\n</tool_call><|im_end|>");
    expect(call[0]).toBe(TOOL_CALL);
    expect(call.slice(-2)).toEqual([TOOL_CALL_END, IM_END]);
    expect(tok.isSpecial(TOOL_CALL)).toBe(false);
    expect(tok.decode(call, { skipSpecialTokens: true })).toBe("<tool_call>\n{}\n</tool_call>");
  });

  it("takes eos ids from tokenizer_config, generation_config and config.json", () => {
    expect(tok.eosIds).toEqual(new Set([IM_END]));
    expect(tok.padId).toBe(END_OF_TEXT);
    const dir = writeModelDir({
      "tokenizer.json": files.tokenizerJson,
      "tokenizer_config.json": files.tokenizerConfig,
      "generation_config.json": { eos_token_id: [IM_END, END_OF_TEXT] },
      "config.json": { eos_token_id: IM_END, bos_token_id: END_OF_TEXT },
    });
    const withGeneration = ModelTokenizer.fromDir(dir);
    expect(withGeneration.eosIds).toEqual(new Set([IM_END, END_OF_TEXT]));
    // config.json's bos_token_id does not make Qwen add a BOS: tokenizer_config says bos_token null.
    expect(withGeneration.bosId).toBeUndefined();
  });

  it("renders a multi-turn chat with a system prompt exactly as ChatML", () => {
    const messages = [
      { role: "system", content: "You answer in one sentence." },
      { role: "user", content: "What is a KV cache?" },
      { role: "assistant", content: "Stored attention keys and values." },
      { role: "user", content: "Und auf Deutsch? 🙂" },
    ];
    const expected =
      "<|im_start|>system\nYou answer in one sentence.<|im_end|>\n" +
      "<|im_start|>user\nWhat is a KV cache?<|im_end|>\n" +
      "<|im_start|>assistant\nStored attention keys and values.<|im_end|>\n" +
      "<|im_start|>user\nUnd auf Deutsch? 🙂<|im_end|>\n" +
      "<|im_start|>assistant\n";
    expect(tok.applyChatTemplate(messages, { addGenerationPrompt: true })).toBe(expected);
    expect(tok.applyChatTemplate(messages, { addGenerationPrompt: false })).toBe(
      expected.slice(0, -"<|im_start|>assistant\n".length),
    );
    const { prompt, ids } = tok.renderAndEncode(messages, { addGenerationPrompt: true });
    expect(prompt).toBe(expected);
    expect(ids).toEqual(tok.encode(expected, { addSpecialTokens: false }));
    expect(ids[0]).toBe(IM_START);
    expect(ids.filter((id) => id === IM_START)).toHaveLength(5);
    expect(tok.decode(ids)).toBe(expected);
  });

  it("uses the default system prompt and renders tools", () => {
    expect(tok.applyChatTemplate([{ role: "user", content: "Hi" }], { addGenerationPrompt: true })).toBe(
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
    const tools = [
      { type: "function", function: { name: "now", description: "Current time", parameters: {} } },
    ];
    expect(
      tok.applyChatTemplate([{ role: "user", content: "Time?" }], { addGenerationPrompt: false, tools }),
    ).toBe(
      "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
        '{"type": "function", "function": {"name": "now", "description": "Current time", "parameters": {}}}\n</tools>\n\n' +
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n" +
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' +
        "<|im_start|>user\nTime?<|im_end|>\n",
    );
  });

  it("finds the template in chat_template.jinja or in a named list", () => {
    const messages = [{ role: "user", content: "Hi" }];
    const tools = [{ type: "function", function: { name: "now" } }];
    const named = ModelTokenizer.fromDir(
      writeModelDir({
        "tokenizer.json": files.tokenizerJson,
        "tokenizer_config.json": {
          ...(files.tokenizerConfig as object),
          chat_template: [
            { name: "default", template: "D:{{ messages[0].content }}" },
            { name: "tool_use", template: "T:{{ tools[0].function.name }}" },
          ],
        },
      }),
    );
    expect(named.applyChatTemplate(messages, { addGenerationPrompt: true })).toBe("D:Hi");
    expect(named.applyChatTemplate(messages, { addGenerationPrompt: true, tools })).toBe("T:now");
    const jinjaFile = ModelTokenizer.fromDir(
      writeModelDir({
        "tokenizer.json": files.tokenizerJson,
        "tokenizer_config.json": files.tokenizerConfig,
        "chat_template.jinja": "{{ eos_token }}{{ messages | length }}{{ flavour }}",
      }),
    );
    expect(
      jinjaFile.applyChatTemplate(messages, { addGenerationPrompt: false, variables: { flavour: "!" } }),
    ).toBe("<|im_end|>1!");
  });

  it("rejects ids outside the vocabulary", () => {
    expect(() => tok.decode([1, 4005])).toThrow(
      new RangeError("token id 4005 is outside the vocabulary of 4005 tokens"),
    );
    expect(() => tok.decode([-1])).toThrow(
      new RangeError("token id -1 is outside the vocabulary of 4005 tokens"),
    );
    expect(tok.decode([])).toBe("");
  });
});

describe("ModelTokenizer (Llama 3 style)", () => {
  const BEGIN = 4000;
  const END = 4001;
  const START_HEADER = 4002;
  const END_HEADER = 4003;
  const EOT = 4004;
  const LLAMA3_TEMPLATE =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + " +
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}" +
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}" +
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

  function llamaDir(templateOverride?: string, configExtra: Record<string, unknown> = {}): string {
    const base = files.tokenizerJson as Record<string, unknown>;
    const added = [
      "<|begin_of_text|>",
      "<|end_of_text|>",
      "<|start_header_id|>",
      "<|end_header_id|>",
      "<|eot_id|>",
    ];
    const tokenizerJson = {
      ...base,
      added_tokens: added.map((content, i) => ({
        id: 4000 + i,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      })),
      post_processor: {
        type: "Sequence",
        processors: [
          { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
          {
            type: "TemplateProcessing",
            single: [
              { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
              { Sequence: { id: "A", type_id: 0 } },
            ],
            pair: [
              { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
              { Sequence: { id: "A", type_id: 0 } },
              { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } },
              { Sequence: { id: "B", type_id: 1 } },
            ],
            special_tokens: {
              "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [BEGIN], tokens: ["<|begin_of_text|>"] },
            },
          },
        ],
      },
    };
    // Hand-written after Llama 3 Instruct's tokenizer_config.json.
    const tokenizerConfig = {
      bos_token: "<|begin_of_text|>",
      eos_token: "<|eot_id|>",
      chat_template: templateOverride ?? LLAMA3_TEMPLATE,
      clean_up_tokenization_spaces: false,
      model_max_length: 8192,
      tokenizer_class: "PreTrainedTokenizerFast",
      ...configExtra,
    };
    return writeModelDir({
      "tokenizer.json": tokenizerJson,
      "tokenizer_config.json": tokenizerConfig,
      "generation_config.json": { bos_token_id: BEGIN, eos_token_id: [END, EOT] },
    });
  }

  it("adds the BOS to plain text through the post-processor", () => {
    const llama = ModelTokenizer.fromDir(llamaDir());
    expect(llama.bosId).toBe(BEGIN);
    expect(llama.addsBos).toBe(true);
    expect(llama.eosIds).toEqual(new Set([END, EOT]));
    expect(llama.encode("Hello, world!")).toEqual([BEGIN, 3400, 344, 11, 1005, 389, 0]);
    expect(llama.encode("Hello, world!", { addSpecialTokens: false })).toEqual([3400, 344, 11, 1005, 389, 0]);
  });

  it("does not add a second BOS when the template writes one", () => {
    const llama = ModelTokenizer.fromDir(llamaDir());
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "  Hi!  " },
    ];
    const { prompt, ids } = llama.renderAndEncode(messages, { addGenerationPrompt: true });
    expect(prompt).toBe(
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    );
    expect(ids.filter((id) => id === BEGIN)).toEqual([BEGIN]);
    expect(ids.slice(0, 3)).toEqual([
      BEGIN,
      START_HEADER,
      llama.encode("system", { addSpecialTokens: false })[0],
    ]);
    expect(ids[ids.length - 2]).toBe(END_HEADER);
    expect(llama.decode(ids)).toBe(prompt);
  });

  it("adds the BOS once when the template leaves it out", () => {
    const withoutBos = LLAMA3_TEMPLATE.replace("{% set content = bos_token + content %}", "");
    const llama = ModelTokenizer.fromDir(llamaDir(withoutBos));
    const { prompt, ids } = llama.renderAndEncode([{ role: "user", content: "Hi" }], {
      addGenerationPrompt: false,
    });
    expect(prompt).toBe("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
    expect(ids[0]).toBe(BEGIN);
    expect(ids.filter((id) => id === BEGIN)).toHaveLength(1);
    expect(ids[ids.length - 1]).toBe(EOT);
  });

  it("lets add_bos_token / add_eos_token override the post-processor", () => {
    const noBos = ModelTokenizer.fromDir(llamaDir(undefined, { add_bos_token: false }));
    expect(noBos.addsBos).toBe(false);
    expect(noBos.encode("Hello, world!")).toEqual([3400, 344, 11, 1005, 389, 0]);
    const both = ModelTokenizer.fromDir(llamaDir(undefined, { add_bos_token: true, add_eos_token: true }));
    expect(both.encode("Hello, world!")).toEqual([BEGIN, 3400, 344, 11, 1005, 389, 0, EOT]);
    // A chat prompt never gets the EOS appended.
    const { ids } = both.renderAndEncode([{ role: "user", content: "Hi" }], { addGenerationPrompt: true });
    expect(ids[ids.length - 1]).not.toBe(EOT);
    expect(ids.filter((id) => id === BEGIN)).toHaveLength(1);
  });
});

describe("IncrementalDetokenizer", () => {
  function stream(ids: number[], tokenizer = tok): string[] {
    const detok = new IncrementalDetokenizer(tokenizer);
    const deltas = ids.map((id) => detok.push(id));
    deltas.push(detok.flush());
    return deltas;
  }

  it("holds back an emoji until all its bytes have arrived", () => {
    const thumbsUp = [0xf0, 0x9f, 0x91, 0x8d].map(byteId);
    const euro = [0xe2, 0x82, 0xac].map(byteId);
    const ids = [...tok.encode("Hi "), ...thumbsUp, ...tok.encode(" ok"), ...euro, ...tok.encode("!")];
    const deltas = stream(ids);
    expect(deltas).toEqual(["H", "i", " ", "", "", "", "👍", " o", "k", "", "", "€", "!", ""]);
    expect(deltas.join("")).toBe("Hi 👍 ok€!");
    expect(deltas.join("")).toBe(tok.decode(ids));
  });

  it("streams multilingual text with special tokens back to the full decode", () => {
    const text = MULTILINGUAL.filter((t) => !t.includes("\uFFFD")).join("<|im_end|>\n<|im_start|>");
    const ids = tok.encode(text);
    const decodeSpy = jest.spyOn(tok, "decode");
    const deltas = stream(ids);
    const decodedIds = decodeSpy.mock.calls.reduce((sum, [callIds]) => sum + callIds.length, 0);
    decodeSpy.mockRestore();
    expect(deltas.join("")).toBe(text);
    expect(decodedIds).toBeLessThan(ids.length * 8);
    const withoutSpecial = new IncrementalDetokenizer(tok, { skipSpecialTokens: true });
    const visible = ids.map((id) => withoutSpecial.push(id)).join("") + withoutSpecial.flush();
    expect(visible).toBe(tok.decode(ids, { skipSpecialTokens: true }));
    expect(visible).toBe(text.replace(/<\|im_(start|end)\|>/g, ""));
    expect(deltas.some((d) => d.includes("\uFFFD"))).toBe(false);
  });

  it("equals decode(allIds) on random token sequences", () => {
    let state = 12345;
    const random = () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state / 2 ** 32;
    };
    for (let round = 0; round < 20; round++) {
      // Byte tokens are over-represented so that many characters straddle tokens or stay broken.
      const ids = Array.from({ length: 300 }, () =>
        random() < 0.5 ? byteId(0x80 + Math.floor(random() * 0x80)) : Math.floor(random() * tok.vocabSize),
      );
      expect(stream(ids).join("")).toBe(tok.decode(ids));
    }
  });

  it("emits a broken sequence as U+FFFD at the end, like decode", () => {
    const ids = [...tok.encode("ok "), byteId(0xe2), byteId(0x82)];
    const deltas = stream(ids);
    expect(deltas).toEqual(["ok", " ", "", "", "\uFFFD"]);
  });

  it("stays O(1) per token when a model emits stray bytes forever", () => {
    const decodeSpy = jest.spyOn(tok, "decode");
    const ids = Array.from({ length: 2000 }, () => byteId(0x80));
    const deltas = stream(ids);
    const decodedIds = decodeSpy.mock.calls.reduce((sum, [callIds]) => sum + callIds.length, 0);
    decodeSpy.mockRestore();
    expect(deltas.join("")).toBe("\uFFFD".repeat(2000));
    // Re-decoding the whole held-back run each step would be about 2000 * 2000 / 2 ids.
    expect(decodedIds).toBeLessThan(2000 * 16);
  });
});

describe("loading errors", () => {
  it("names a missing tokenizer.json", () => {
    const dir = tempDir();
    const file = path.join(dir, "tokenizer.json");
    const error = caught(() => ModelTokenizer.fromDir(dir));
    expect(error).toBeInstanceOf(TokenizerError);
    expect(error).toMatchObject({
      code: "MODEL_FILE_MISSING",
      file,
      message: `tokenizer.json not found at ${file}`,
    });
  });

  it("names an unparsable or empty tokenizer.json", () => {
    const broken = writeModelDir({ "tokenizer.json": "{ not json" });
    const brokenFile = path.join(broken, "tokenizer.json");
    const error = caught(() => ModelTokenizer.fromDir(broken));
    expect(error).toBeInstanceOf(TokenizerError);
    expect(error).toMatchObject({ code: "MODEL_INVALID", file: brokenFile });
    // The rest of the message is V8's JSON.parse diagnostic.
    expect((error as Error).message.startsWith(`${brokenFile}: not valid JSON: `)).toBe(true);
    const empty = writeModelDir({ "tokenizer.json": {} });
    expect(() => ModelTokenizer.fromDir(empty)).toThrow(
      expect.objectContaining({
        code: "MODEL_INVALID",
        message: `${path.join(empty, "tokenizer.json")}: no tokenizer model`,
      }),
    );
  });

  it("refuses a special token that is not in the vocabulary", () => {
    const dir = writeModelDir({
      "tokenizer.json": files.tokenizerJson,
      "tokenizer_config.json": { ...(files.tokenizerConfig as object), eos_token: "<|eot_id|>" },
    });
    expect(() => ModelTokenizer.fromDir(dir)).toThrow(
      expect.objectContaining({
        code: "MODEL_INVALID",
        message: `${path.join(dir, "tokenizer_config.json")}: eos_token "<|eot_id|>" is not in the vocabulary`,
      }),
    );
  });

  it("reports a missing or failing chat template", () => {
    const { chat_template: _omitted, ...noTemplate } = files.tokenizerConfig as Record<string, unknown>;
    const bare = ModelTokenizer.fromDir(
      writeModelDir({ "tokenizer.json": files.tokenizerJson, "tokenizer_config.json": noTemplate }),
    );
    expect(bare.hasChatTemplate).toBe(false);
    expect(() =>
      bare.applyChatTemplate([{ role: "user", content: "x" }], { addGenerationPrompt: true }),
    ).toThrow(
      expect.objectContaining({
        code: "CHAT_TEMPLATE_MISSING",
        message: "the model has no chat template; send a text prompt instead",
      }),
    );
    const strict = ModelTokenizer.fromDir(
      writeModelDir({
        "tokenizer.json": files.tokenizerJson,
        "tokenizer_config.json": {
          ...noTemplate,
          chat_template:
            "{% if messages[0].role != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}",
        },
      }),
    );
    expect(() =>
      strict.applyChatTemplate([{ role: "assistant", content: "x" }], { addGenerationPrompt: true }),
    ).toThrow(
      expect.objectContaining({
        code: "CHAT_TEMPLATE_FAILED",
        message: "chat template rejected the conversation: first turn must be the user",
      }),
    );
  });
});
