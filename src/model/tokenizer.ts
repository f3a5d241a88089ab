/**
 * The model's tokenizer: tokenizer.json through @huggingface/tokenizers, chat templates through
 * @huggingface/jinja, BOS/EOS resolved the way Hugging Face's loaders do, and streaming detokenization.
 */
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { KvparkError } from "../errors";
import { type ChatMessage, placeReasoning, templateFacts, type TemplateFacts } from "./chat-template";
import { detectReasoning, detectToolCallFormat } from "./tool-calls";
import type { ToolCallFormat } from "./tool-syntax";

export type { ChatMessage } from "./chat-template";
export { IncrementalDetokenizer } from "./detokenizer";

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

/** Options of {@link ModelTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** Append the header that opens the assistant's turn. */
  addGenerationPrompt: boolean;
  /**
   * Tools in the shape transformers' `apply_chat_template(tools=...)` passes them:
   * `[{type: "function", function: {name, description, parameters: <object>}}]`. Refused
   * (CHAT_TEMPLATE_FAILED) when the template does not read `tools`, rather than dropped.
   */
  tools?: readonly object[];
  /** Further template variables, e.g. `enable_thinking` for templates that read it. */
  variables?: Record<string, unknown>;
}

/** Options of {@link ModelTokenizer.decode}. */
export interface DecodeOptions {
  /** Leave out special tokens (`<|im_end|>`...). */
  skipSpecialTokens?: boolean;
  /** Special tokens kept even when `skipSpecialTokens` is set. */
  keepSpecialIds?: ReadonlySet<number>;
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
  /** How the model writes tool calls, from its chat template and vocabulary; null: tools are refused. */
  readonly toolCallFormat: ToolCallFormat | null;
  /** Whether the model writes reasoning apart from its answer (`<think>` blocks). */
  readonly reasoning: boolean;

  private readonly tokenizer: Tokenizer;
  private readonly config: JsonObject;
  private readonly specialIds: Set<number>;
  private readonly template: Template | undefined;
  private readonly toolTemplate: Template | undefined;
  /** What the default template, and the one used with tools (tool_use, else default), read. */
  private readonly templateFacts: TemplateFacts | undefined;
  private readonly toolTemplateFacts: TemplateFacts | undefined;
  /** Ids a skip-special decode drops: special added tokens and additional_special_tokens. */
  private readonly skippedIds: Set<number>;
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
    const additional = Array.isArray(this.config.additional_special_tokens)
      ? this.config.additional_special_tokens.map(tokenText)
      : undefined;
    if (additional) this.templateVariables.additional_special_tokens = additional;
    this.skippedIds = new Set(this.specialIds);
    for (const text of additional ?? []) {
      const id = text === undefined ? undefined : this.tokenizer.token_to_id(text);
      if (id !== undefined) this.skippedIds.add(id);
    }

    this.templateFacts = this.template && templateFacts(this.template);
    this.toolTemplateFacts = this.toolTemplate ? templateFacts(this.toolTemplate) : this.templateFacts;
    const hasToken = (token: string) => this.tokenizer.token_to_id(token) !== undefined;
    this.toolCallFormat = detectToolCallFormat(
      templates.toolUse ?? templates.default,
      this.toolTemplateFacts?.usesTools ?? false,
      hasToken,
    );
    this.reasoning = detectReasoning(templates.default, hasToken);

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

  /**
   * Token ids to text; throws a RangeError for an id outside the vocabulary. `keepSpecialIds` are
   * special tokens that stay in the text although `skipSpecialTokens` drops the others (a tool-call
   * marker such as Mistral's `[TOOL_CALLS]`, which the output parser must see).
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
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
    const keep = options.keepSpecialIds;
    if (options.skipSpecialTokens && keep !== undefined && keep.size > 0) {
      // The library's skip drops the same ids before decoding the rest, so this is that decode with
      // the kept ones left in.
      const kept = ids.filter((id) => !this.skippedIds.has(id) || keep.has(id));
      return kept.length === 0 ? "" : this.tokenizer.decode(kept, { skip_special_tokens: false });
    }
    return this.tokenizer.decode(ids as number[], {
      skip_special_tokens: options.skipSpecialTokens ?? false,
    });
  }

  /**
   * The special tokens among `markers` (tool-call and reasoning markers, see `outputMarkers`), which a
   * decode that skips special tokens must keep for the output parser to see them.
   */
  specialIdsOf(markers: readonly string[]): Set<number> {
    const ids = new Set<number>();
    for (const marker of markers) {
      const id = this.tokenizer.token_to_id(marker);
      if (id !== undefined && this.skippedIds.has(id)) ids.add(id);
    }
    return ids;
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

  /** Whether the chat template takes tools (reads the `tools` variable); if not, tools are refused. */
  get templateUsesTools(): boolean {
    return this.toolTemplateFacts?.usesTools ?? false;
  }

  /**
   * Renders a conversation with the model's chat template, as transformers' apply_chat_template does:
   * messages (see ChatMessage) and tools in transformers' shapes; an assistant's `reasoning_content` is
   * also put under the field the template reads reasoning from, if that is another.
   */
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
    if (useTools && !this.templateUsesTools) {
      throw new TokenizerError(
        "CHAT_TEMPLATE_FAILED",
        "the model's chat template does not take tools; send the request without tools",
        this.templateFile,
      );
    }
    const context: Record<string, unknown> = {
      ...this.templateVariables,
      ...options.variables,
      messages: placeReasoning(messages, useTools ? this.toolTemplateFacts! : this.templateFacts!),
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
