/**
 * The model's tokenizer: tokenizer.json through @huggingface/tokenizers, chat templates through
 * @huggingface/jinja, BOS/EOS resolved the way Hugging Face's loaders do, and streaming detokenization.
 */
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { KvparkError } from "../errors";

/** Stable codes of {@link TokenizerError}. */
export type TokenizerErrorCode =
  "MODEL_FILE_MISSING" | "MODEL_INVALID" | "CHAT_TEMPLATE_MISSING" | "CHAT_TEMPLATE_FAILED";

/** A tokenizer that cannot be loaded or a chat that cannot be rendered; `file` names the culprit. */
export class TokenizerError extends KvparkError<TokenizerErrorCode> {
  override readonly name = "TokenizerError";

  constructor(
    code: TokenizerErrorCode,
    message: string,
    readonly file?: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

/** One chat turn. Extra fields (`tool_calls`, `name`...) are passed through to the template. */
export interface ChatMessage {
  role: string;
  content: string;
  [field: string]: unknown;
}

/** Options of {@link ModelTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** Append the header that opens the assistant's turn. */
  addGenerationPrompt: boolean;
  /** Tool (function) schemas for templates that support tool calling. */
  tools?: readonly object[];
  /** Further template variables, e.g. `enable_thinking` for templates that read it. */
  variables?: Record<string, unknown>;
}

/** The JSON documents a tokenizer is built from; `source` names their directory in errors. */
export interface TokenizerSources {
  tokenizerJson: unknown;
  tokenizerConfig?: unknown;
  generationConfig?: unknown;
  modelConfig?: unknown;
  /** Overrides `chat_template` of tokenizer_config (newer checkpoints ship chat_template.jinja). */
  chatTemplate?: string;
  source?: string;
}

type JsonObject = Record<string, unknown>;

const isObject = (value: unknown): value is JsonObject =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** A MODEL_INVALID error whose message starts with the file it is about. */
function invalid(file: string, problem: string, cause?: unknown): TokenizerError {
  const detail = cause instanceof Error ? `: ${cause.message}` : "";
  return new TokenizerError("MODEL_INVALID", `${file}: ${problem}${detail}`, file, { cause });
}

function readJson(file: string, required: true): unknown;
function readJson(file: string, required: false): unknown | undefined;
function readJson(file: string, required: boolean): unknown {
  if (!existsSync(file)) {
    if (!required) return undefined;
    throw new TokenizerError("MODEL_FILE_MISSING", `${path.basename(file)} not found at ${file}`, file);
  }
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (cause) {
    throw invalid(file, "cannot be read", cause);
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw invalid(file, "not valid JSON", cause);
  }
}

/** Special-token entries in tokenizer_config.json are either a string or an AddedToken-like object. */
function tokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (isObject(value) && typeof value.content === "string") return value.content;
  return undefined;
}

/** Picks the chat template: a plain string, or the named list older checkpoints store. */
function selectTemplate(value: unknown, file: string): { default?: string; toolUse?: string } {
  if (value === undefined || value === null) return {};
  if (typeof value === "string") return { default: value };
  if (Array.isArray(value)) {
    const named = new Map<string, string>();
    for (const entry of value) {
      if (!isObject(entry) || typeof entry.name !== "string" || typeof entry.template !== "string") {
        throw invalid(file, "chat_template entries need a name and a template");
      }
      named.set(entry.name, entry.template);
    }
    return { default: named.get("default"), toolUse: named.get("tool_use") };
  }
  throw invalid(file, "chat_template must be a string or a list");
}

function compileTemplate(source: string | undefined, file: string): Template | undefined {
  if (source === undefined) return undefined;
  try {
    return new Template(source);
  } catch (cause) {
    throw invalid(file, "chat template does not parse", cause);
  }
}

function eosIdsOf(config: unknown, file: string): number[] {
  if (!isObject(config) || config.eos_token_id === undefined || config.eos_token_id === null) return [];
  const raw = config.eos_token_id;
  const ids = Array.isArray(raw) ? raw : [raw];
  for (const id of ids) {
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw invalid(file, "eos_token_id must be a token id or a list of them");
    }
  }
  return ids as number[];
}

/** A model's tokenizer with its special tokens and chat template. */
export class ModelTokenizer {
  /** Ids the tokenizer knows, including added tokens (max id + 1). */
  readonly vocabSize: number;
  readonly bosToken: string | undefined;
  readonly bosId: number | undefined;
  readonly eosToken: string | undefined;
  /** Every id that ends generation: generation_config, config.json and tokenizer_config's eos_token. */
  readonly eosIds: Set<number>;
  readonly padId: number | undefined;
  /** Whether encoding plain text with special tokens puts a BOS in front. */
  readonly addsBos: boolean;

  private readonly tokenizer: Tokenizer;
  private readonly config: JsonObject;
  private readonly specialIds: Set<number>;
  private readonly template: Template | undefined;
  private readonly toolTemplate: Template | undefined;
  private readonly templateVariables: Record<string, unknown>;
  private readonly configFile: string;
  /** Where the chat template came from, for errors: chat_template.jinja or tokenizer_config.json. */
  private readonly templateFile: string;

  /** Loads tokenizer.json, tokenizer_config.json and the eos ids of generation_config.json / config.json. */
  static fromDir(dir: string): ModelTokenizer {
    const file = (name: string) => path.join(dir, name);
    const templateFile = file("chat_template.jinja");
    return new ModelTokenizer({
      tokenizerJson: readJson(file("tokenizer.json"), true),
      tokenizerConfig: readJson(file("tokenizer_config.json"), false),
      generationConfig: readJson(file("generation_config.json"), false),
      modelConfig: readJson(file("config.json"), false),
      chatTemplate: existsSync(templateFile) ? readFileSync(templateFile, "utf8") : undefined,
      source: dir,
    });
  }

  /** Builds the tokenizer from already parsed files; {@link ModelTokenizer.fromDir} reads them from disk. */
  constructor(sources: TokenizerSources) {
    const dir = sources.source ?? "<memory>";
    const tokenizerFile = path.join(dir, "tokenizer.json");
    this.configFile = path.join(dir, "tokenizer_config.json");
    if (!isObject(sources.tokenizerJson) || !isObject(sources.tokenizerJson.model)) {
      throw invalid(tokenizerFile, "no tokenizer model");
    }
    if (sources.tokenizerConfig !== undefined && !isObject(sources.tokenizerConfig)) {
      throw invalid(this.configFile, "must hold a JSON object");
    }
    this.config = sources.tokenizerConfig ?? {};
    // The library iterates these sections unconditionally; files written by older tokenizers omit them.
    const tokenizerJson = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...sources.tokenizerJson,
    };
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, this.config);
    } catch (cause) {
      throw invalid(tokenizerFile, "cannot be loaded", cause);
    }

    let maxId = -1;
    for (const id of this.tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.specialIds = new Set(
      [...this.tokenizer.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id),
    );

    const idOf = (name: string): { text?: string; id?: number } => {
      const text = tokenText(this.config[name]);
      if (text === undefined) return {};
      const id = this.tokenizer.token_to_id(text);
      if (id === undefined) {
        throw invalid(this.configFile, `${name} ${JSON.stringify(text)} is not in the vocabulary`);
      }
      return { text, id };
    };
    const bos = idOf("bos_token");
    const eos = idOf("eos_token");
    this.bosToken = bos.text;
    this.bosId = bos.id;
    this.eosToken = eos.text;
    // Only informational, and some checkpoints name a pad token their vocabulary lacks.
    const padText = tokenText(this.config.pad_token);
    this.padId = padText === undefined ? undefined : this.tokenizer.token_to_id(padText);
    this.eosIds = new Set([
      ...eosIdsOf(sources.generationConfig, path.join(dir, "generation_config.json")),
      ...eosIdsOf(sources.modelConfig, path.join(dir, "config.json")),
      ...(eos.id === undefined ? [] : [eos.id]),
    ]);

    this.templateFile =
      sources.chatTemplate === undefined ? this.configFile : path.join(dir, "chat_template.jinja");
    const templates = selectTemplate(sources.chatTemplate ?? this.config.chat_template, this.templateFile);
    this.template = compileTemplate(templates.default, this.templateFile);
    this.toolTemplate = compileTemplate(templates.toolUse, this.templateFile);
    this.templateVariables = {};
    for (const name of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
      const text = tokenText(this.config[name]);
      if (text !== undefined) this.templateVariables[name] = text;
    }
    if (Array.isArray(this.config.additional_special_tokens)) {
      this.templateVariables.additional_special_tokens = this.config.additional_special_tokens.map(tokenText);
    }

    const probe = this.encode("a", { addSpecialTokens: true });
    this.addsBos = this.bosId !== undefined && probe[0] === this.bosId;
  }

  /**
   * Text to token ids. With `addSpecialTokens`, tokenizer_config's `add_bos_token` / `add_eos_token` decide
   * when present (as Hugging Face's Llama and Gemma tokenizers rebuild their post-processor from them);
   * otherwise tokenizer.json's post-processor does.
   */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    const { addSpecialTokens = true } = options;
    const addBos = this.config.add_bos_token;
    const addEos = this.config.add_eos_token;
    if (addSpecialTokens && typeof addBos !== "boolean" && typeof addEos !== "boolean") {
      return this.tokenizer.encode(text, { add_special_tokens: true }).ids;
    }
    const ids = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    if (!addSpecialTokens) return ids;
    if (addBos === true && this.bosId !== undefined) ids.unshift(this.bosId);
    const eosId = this.eosToken === undefined ? undefined : this.tokenizer.token_to_id(this.eosToken);
    if (addEos === true && eosId !== undefined) ids.push(eosId);
    return ids;
  }

  /** Token ids to text; throws a RangeError for an id outside the vocabulary. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return "";
    for (const id of ids) {
      if (
        !Number.isInteger(id) ||
        id < 0 ||
        id >= this.vocabSize ||
        this.tokenizer.id_to_token(id) === undefined
      ) {
        throw new RangeError(`token id ${id} is outside the vocabulary of ${this.vocabSize} tokens`);
      }
    }
    return this.tokenizer.decode(ids as number[], {
      skip_special_tokens: options.skipSpecialTokens ?? false,
    });
  }

  /** The id of a token string (special tokens included), if the vocabulary has it. */
  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  /** Whether `id` is an added token marked special (e.g. `<|im_end|>`). */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Whether the tokenizer has a chat template. */
  get hasChatTemplate(): boolean {
    return this.template !== undefined;
  }

  /** Renders a conversation with the model's chat template, as transformers' apply_chat_template does. */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions): string {
    const useTools = options.tools !== undefined && options.tools.length > 0;
    const template = (useTools ? this.toolTemplate : undefined) ?? this.template;
    if (template === undefined) {
      throw new TokenizerError(
        "CHAT_TEMPLATE_MISSING",
        "the model has no chat template; send a text prompt instead",
        this.configFile,
      );
    }
    const context: Record<string, unknown> = {
      ...this.templateVariables,
      ...options.variables,
      messages,
      add_generation_prompt: options.addGenerationPrompt,
    };
    if (useTools) context.tools = options.tools;
    try {
      return template.render(context);
    } catch (cause) {
      // raise_exception() in a template reports a conversation the model cannot take (wrong role order...).
      throw new TokenizerError(
        "CHAT_TEMPLATE_FAILED",
        `chat template rejected the conversation: ${(cause as Error).message}`,
        this.templateFile,
        { cause },
      );
    }
  }

  /**
   * Renders a conversation and encodes it. The template writes its own special tokens, so only the BOS
   * that plain encoding would add is added, and only when the rendered text does not already start with
   * it; an EOS is never appended because it would tell the model the prompt is finished.
   */
  renderAndEncode(
    messages: readonly ChatMessage[],
    options: ChatTemplateOptions,
  ): { prompt: string; ids: number[] } {
    const prompt = this.applyChatTemplate(messages, options);
    const ids = this.encode(prompt, { addSpecialTokens: false });
    if (this.addsBos && this.bosToken !== undefined && !prompt.startsWith(this.bosToken)) {
      ids.unshift(this.bosId as number);
    }
    return { prompt, ids };
  }
}

// An incomplete UTF-8 sequence has at most 3 bytes; decoders render it as at most 3 U+FFFD (one per
// byte for SentencePiece byte fallback, one in all for byte-level BPE). Only that many can still change.
const PROVISIONAL_REPLACEMENTS_MAX = 3;
// Tokens kept when a window that keeps ending in U+FFFD is cut: enough to hold an incomplete sequence.
const CUT_TAIL_TOKENS = 4;
// A window holding more unsettled tokens than this is cut, so decoding stays O(1) per token even when a
// model emits stray bytes for a long time.
const PENDING_TOKENS_MAX = 8;

function trailingReplacements(text: string): number {
  let n = 0;
  while (n < text.length && text.charCodeAt(text.length - 1 - n) === 0xfffd) n++;
  return Math.min(n, PROVISIONAL_REPLACEMENTS_MAX);
}

/**
 * Turns generated token ids into text deltas for streaming. The concatenated deltas equal
 * `decode(allIds)`, and a delta never ends in a partial UTF-8 character.
 *
 * Like text-generation-inference's decoder, each step decodes a short window: the tokens emitted by the
 * previous step (context, so SentencePiece-style leading spaces survive) plus the new ones, and emits what
 * the window's text gained. Text ending in U+FFFD may be a character whose bytes are still arriving, so
 * those last replacement characters are held back until the next token settles them.
 */
export class IncrementalDetokenizer {
  private window: number[] = [];
  /** window[0, contextTokens) was fully emitted by an earlier step and is only there as context. */
  private contextTokens = 0;
  /** Characters of decode(window) already emitted. */
  private emitted = 0;

  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly options: { skipSpecialTokens?: boolean } = {},
  ) {}

  /** Adds one generated id and returns the text it completes (possibly empty). */
  push(id: number): string {
    this.window.push(id);
    const text = this.decode(this.window);
    const settled = text.length - trailingReplacements(text);
    let delta = "";
    if (settled > this.emitted) {
      delta = text.slice(this.emitted, settled);
      this.emitted = settled;
    }
    if (settled === text.length) {
      // Everything is out: the tokens of this step become the context of the next one.
      this.window = this.window.slice(this.contextTokens);
      this.contextTokens = this.window.length;
      this.emitted = this.decode(this.window).length;
    } else if (this.window.length - this.contextTokens > PENDING_TOKENS_MAX) {
      this.cut(text);
    }
    return delta;
  }

  /** Emits whatever is held back (a truly broken sequence stays U+FFFD); call once at the end. */
  flush(): string {
    const text = this.decode(this.window);
    const delta = text.length > this.emitted ? text.slice(this.emitted) : "";
    this.window = [];
    this.contextTokens = 0;
    this.emitted = 0;
    return delta;
  }

  /**
   * Drops the head of a window that keeps ending in U+FFFD, keeping the last few tokens. The cut is taken
   * only where decoding the two halves separately gives the same text, i.e. where no character and no
   * decoder context straddles it, and where the head's text is already emitted.
   */
  private cut(text: string): void {
    const at = this.window.length - CUT_TAIL_TOKENS;
    const head = this.decode(this.window.slice(0, at));
    if (head.length > this.emitted) return;
    const tail = this.window.slice(at);
    if (head + this.decode(tail) !== text) return;
    this.window = tail;
    this.contextTokens = 0;
    this.emitted -= head.length;
  }

  private decode(ids: readonly number[]): string {
    return this.tokenizer.decode(ids, { skipSpecialTokens: this.options.skipSpecialTokens });
  }
}
