/**
 * Constrained decoding (structured outputs) with xgrammar: a request's ConstraintSpec becomes a
 * grammar compiled against the model's vocabulary, and a matcher that, before every token, says which
 * tokens keep the output valid. Sequence masks the logits with it, samples, and advances it with the
 * token taken; once the grammar is complete the output ends as if the model had produced EOS.
 *
 * One compiler serves a model. The vocabulary is prepared on the first constrained request (0.05 s
 * for the generated models' 8k tokens, 0.7 s for a Qwen-sized 152k), and compiled grammars are kept by
 * spec text (the last GRAMMARS_KEPT; a few MB each at Qwen size, in xgrammar's WebAssembly memory),
 * because agents resend the same tools and schemas every turn. Compiling runs on the engine's thread,
 * between other requests' steps, one compile at a time (0.1-0.2 s at 8k tokens, about 1 s at 152k).
 *
 * What xgrammar 0.1.27 gets wrong is worked around before and after it: json-strings.ts (string
 * lengths and patterns), number-grammar.ts (bounds), utf8-guard.ts (invalid UTF-8), schema-support.ts
 * (what it cannot compile, and under `strict` what it would skip).
 */
import type { core as mx } from "@frost-beta/mlx";
import { LRUCache } from "lru-cache";
import { SCHEMA_JSON_FIELD as SCHEMA_FIELD, toolParametersField } from "../constraint-spec.js";
import type { ConstraintSpec } from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import { readGrammarVocab } from "./grammar-vocab.js";
import { boundedNumbers } from "./number-grammar.js";
import { jsonSafeStrings } from "./json-strings.js";
import { checkSchema } from "./schema-support.js";
import { countAllowed, idsWithBit, TokenMasker } from "./token-mask.js";
import { chosenTools, TOOL_CALL_ROOT, toolCallGrammar, toolParameters } from "./tool-grammar.js";
import { tokenBytes, Utf8Guard } from "./utf8-guard.js";
import {
  xgrammar,
  xgrammarConsole,
  type XgCompiledGrammar,
  type XgCompiler,
  type XgMatcher,
} from "./xgrammar.js";

/** Compiled grammars kept for reuse. */
export const GRAMMARS_KEPT = 32;
/** Longest part of xgrammar's own message quoted in an error. */
const DETAIL_CHARS_MAX = 160;

/**
 * JSON is generated on one line with `", "` and `": "` between items (as json.dumps and the chat
 * templates' tojson write it), no other whitespace: the output is what a model is trained on, and a
 * model cannot run away in whitespace.
 */
const ANY_WHITESPACE = false;
const ONE_LINE = -1;
/** Properties (and items) the schema does not declare are not generated. */
const DECLARED_ONLY = true;

/** Any JSON object (response_format json_object). */
const OBJECT_SCHEMA = JSON.stringify({ type: "object" });

/** The text a spec is cached by: only what its grammar depends on. */
export function grammarKey(spec: ConstraintSpec): string {
  if (spec.kind !== "tool_call") return JSON.stringify(spec);
  const tools = chosenTools(spec).map((i) => [spec.tools[i].name, spec.tools[i].parametersJson]);
  return JSON.stringify({ kind: spec.kind, format: spec.format, many: spec.choice === "required", tools });
}

/** What xgrammar printed before aborting, without its source location. */
function abortDetail(lines: string[]): string {
  const fatal = lines.find((l) => l.startsWith("[FATAL]"));
  if (!fatal) return "the grammar compiler failed";
  const detail = fatal
    .replace(/^\[FATAL\]\s+\S+:\d+:\s*/, "")
    .replace(/^Check failed: .*? is false:\s*/, "")
    // Positions would point into the pattern as rewritten (json-strings.ts), not as the client wrote it.
    .replace(/^Regex parsing error at position \d+:\s*/, "unsupported regex: ")
    .trim();
  return detail.length > DETAIL_CHARS_MAX ? `${detail.slice(0, DETAIL_CHARS_MAX)}…` : detail;
}

const finalizer = new FinalizationRegistry<XgMatcher>((m) => m.dispose());

/** One request's constraint: the grammar's state after the tokens accepted so far. */
export class Constraint {
  private bitmask: Int32Array = new Int32Array(0);
  private allowed = 0;
  private stale = true;
  private disposed = false;
  /** Where the output stands inside a UTF-8 character (see Utf8Guard). */
  private utf8State = 0;

  constructor(
    private readonly matcher: XgMatcher,
    private readonly masker: TokenMasker,
    private readonly guard: Utf8Guard,
    private readonly stopIds: ReadonlySet<number>,
  ) {
    finalizer.register(this, matcher, this);
  }

  /**
   * Computes which tokens may come next (once per token); true when the grammar is complete, i.e.
   * nothing but a stop token (or nothing at all) may follow.
   */
  async next(): Promise<boolean> {
    const vocab = this.masker.vocab;
    if (this.stale) {
      this.bitmask = await this.matcher.getNextTokenBitmask();
      const grammarAllowed = countAllowed(this.bitmask, vocab);
      this.guard.restrict(this.bitmask, this.utf8State);
      this.allowed = countAllowed(this.bitmask, vocab);
      this.stale = false;
      if (this.allowed === 0 && grammarAllowed > 0) {
        throw new KvparkError("INTERNAL", "the grammar allows only tokens that would break UTF-8");
      }
    }
    if (this.allowed > this.stopIds.size) return false;
    return idsWithBit(this.bitmask, vocab, 1).every((id) => this.stopIds.has(id));
  }

  /** The logits with every token the grammar refuses at -inf; next() must have run since the last token. */
  mask(logits: mx.array): mx.array {
    if (this.stale) throw new Error("Constraint.mask before next()");
    return this.masker.apply(logits, this.bitmask, this.allowed);
  }

  /** Advances the grammar by a token the mask allowed (stop tokens end the output instead). */
  accept(token: number): void {
    if (!this.matcher.acceptToken(token)) {
      throw new KvparkError("INTERNAL", `the grammar refused token ${token}, which its mask allowed`);
    }
    this.utf8State = this.guard.after(this.utf8State, token);
    this.stale = true;
  }

  /** Frees the matcher (WebAssembly memory); idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    finalizer.unregister(this);
    this.matcher.dispose();
  }
}

/** What a compiler prepares once: xgrammar's compiler over the vocabulary, and the per-token helpers. */
interface Prepared {
  compiler: XgCompiler;
  guard: Utf8Guard;
  /** Over the tokenizer's tokens: logits past them (padding) are never allowed. */
  masker: TokenMasker;
}

/** Compiles constraints for one model and opens them for requests. */
export class ConstraintCompiler {
  private static readonly byModel = new Map<string, ConstraintCompiler>();

  /** The compiler of a model (by directory and logits size), made on first use. */
  static forModel(dir: string, vocabSize: number, stopIds: Iterable<number>): ConstraintCompiler {
    const key = `${dir}\0${vocabSize}`;
    let c = ConstraintCompiler.byModel.get(key);
    if (!c) ConstraintCompiler.byModel.set(key, (c = new ConstraintCompiler(dir, vocabSize, [...stopIds])));
    return c;
  }

  private readonly stopIds: ReadonlySet<number>;
  private compiler?: Promise<Prepared>;
  private readonly grammars = new LRUCache<string, XgCompiledGrammar>({
    max: GRAMMARS_KEPT,
    dispose: (g) => g.dispose(),
  });
  /** Compiles and matcher creations run one at a time: xgrammar's messages are captured per compile. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Compiles done and cache hits, for tests and the benchmark. */
  readonly stats = { compiled: 0, reused: 0, lastCompileMs: 0 };

  private constructor(
    private readonly dir: string,
    readonly vocabSize: number,
    stopIds: number[],
  ) {
    this.stopIds = new Set(stopIds);
  }

  /** Prepares the vocabulary (the first constrained request does it otherwise). */
  prepare(): Promise<Prepared> {
    this.compiler ??= (async () => {
      const vocab = readGrammarVocab(this.dir);
      if (vocab.encoded.length > this.vocabSize) {
        throw new KvparkError(
          "MODEL_INVALID",
          `tokenizer.json has ${vocab.encoded.length} tokens, more than the model's ${this.vocabSize} logits`,
        );
      }
      const xg = xgrammar();
      const info = await xg.TokenizerInfo.createTokenizerInfo(
        vocab.encoded,
        vocab.type,
        vocab.prependSpace,
        this.vocabSize,
        [...this.stopIds],
      );
      const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
      return {
        compiler,
        guard: new Utf8Guard(tokenBytes(vocab.encoded, vocab.type), this.vocabSize),
        masker: new TokenMasker(vocab.encoded.length),
      };
    })();
    return this.compiler;
  }

  /** Compiles (or reuses) the spec's grammar and starts a matcher on it. */
  open(spec: ConstraintSpec): Promise<Constraint> {
    const run = this.queue.then(async () => {
      const key = grammarKey(spec);
      let grammar = this.grammars.get(key);
      if (grammar) this.stats.reused++;
      else {
        const t0 = performance.now();
        grammar = await this.compile(spec);
        this.stats.lastCompileMs = performance.now() - t0;
        this.stats.compiled++;
        this.grammars.set(key, grammar);
      }
      const vocab = this.vocabSize;
      const matcher = await xgrammar().GrammarMatcher.createGrammarMatcher({
        handle: grammar.handle,
        tokenizerInfo: () => ({ getVocabSize: () => vocab }),
      });
      const { masker, guard } = await this.prepare();
      return new Constraint(matcher, masker, guard, this.stopIds);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async compile(spec: ConstraintSpec): Promise<XgCompiledGrammar> {
    const { compiler } = await this.prepare();
    switch (spec.kind) {
      case "json_object":
        return this.guarded(SCHEMA_FIELD, () =>
          compiler.compileJSONSchema(OBJECT_SCHEMA, ANY_WHITESPACE, ONE_LINE, undefined, DECLARED_ONLY),
        );
      case "json_schema": {
        checkSchema(spec.schema, SCHEMA_FIELD, spec.strict);
        const schema = jsonSafeStrings(spec.schema, SCHEMA_FIELD, spec.strict);
        return this.viaEbnf(compiler, schema, "", "root", SCHEMA_FIELD);
      }
      case "tool_call": {
        const { schema, rules } = toolCallGrammar(spec);
        try {
          return await this.viaEbnf(compiler, schema, rules, TOOL_CALL_ROOT, "prompt.chat.tools");
        } catch (err) {
          await this.blameTool(spec);
          throw err;
        }
      }
    }
  }

  /**
   * Compiles a schema through xgrammar's EBNF, with its bounded numbers replaced by exact rules
   * (number-grammar.ts) and `rules` added (the text around a tool call), from `root`.
   */
  private async viaEbnf(
    compiler: XgCompiler,
    schema: unknown,
    rules: string,
    root: string,
    field: string,
  ): Promise<XgCompiledGrammar> {
    const numbers = boundedNumbers(schema, (problem) => {
      throw invalidField(field, problem);
    });
    const json = await this.guarded(field, () =>
      xgrammar().Grammar.fromJSONSchema(
        JSON.stringify(numbers.schema),
        ANY_WHITESPACE,
        ONE_LINE,
        undefined,
        DECLARED_ONLY,
      ),
    );
    const ebnf = `${numbers.substitute(json.toString())}\n${rules}`;
    json.dispose();
    return this.guarded(field, () => compiler.compileGrammar(ebnf, root));
  }

  /**
   * When the tools' grammar cannot be built, throws the error of the first chosen tool whose schema
   * alone does not convert, naming its parameters_json (else the caller reports the tools as a whole).
   */
  private async blameTool(spec: Extract<ConstraintSpec, { kind: "tool_call" }>): Promise<void> {
    const xg = xgrammar();
    for (const i of chosenTools(spec)) {
      const field = toolParametersField(i);
      const schema = JSON.stringify(toolParameters(spec.tools[i].parametersJson, i));
      const g = await this.guarded(field, () =>
        xg.Grammar.fromJSONSchema(schema, ANY_WHITESPACE, ONE_LINE, undefined, DECLARED_ONLY),
      );
      g.dispose();
    }
  }

  /**
   * Runs an xgrammar call that may abort; an abort becomes INVALID_ARGUMENT naming `field`, with the
   * reason xgrammar printed. (The WebAssembly instance stays usable after an abort; what the aborted
   * call had allocated is not freed.)
   */
  private async guarded<T>(field: string, call: () => Promise<T>): Promise<T> {
    const lines: string[] = [];
    const sink = xgrammarConsole.sink;
    xgrammarConsole.sink = (line) => void lines.push(line);
    try {
      return await call();
    } catch (err) {
      if (err instanceof KvparkError) throw err;
      throw invalidField(field, `cannot be compiled into a grammar: ${abortDetail(lines)}`);
    } finally {
      xgrammarConsole.sink = sink;
    }
  }
}
