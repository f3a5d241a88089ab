/**
 * The incremental parser of a model's output: generated text (with its token ids) in, text, reasoning
 * and tool-call events out, while it streams. `tool-calls.ts` says which format a model writes.
 */
import { randomInt } from "node:crypto";
import { JsonScanner, topLevelSpans } from "./json-scan";
import type { ToolCallFormat } from "./tool-syntax";

const THINK_OPEN = "<think>";
const THINK_CLOSE = "</think>";
const HERMES_OPEN = "<tool_call>";
const HERMES_CLOSE = "</tool_call>";
const MISTRAL_CALLS = "[TOOL_CALLS]";
const MISTRAL_ARGS = "[ARGS]";
const MISTRAL_CALL_ID = "[CALL_ID]";
const PYTHON_TAG = "<|python_tag|>";

/** The literal markers of tool calls and reasoning in model output. */
export const MARKERS = {
  thinkOpen: THINK_OPEN,
  thinkClose: THINK_CLOSE,
  hermesOpen: HERMES_OPEN,
  hermesClose: HERMES_CLOSE,
  mistralCalls: MISTRAL_CALLS,
  mistralArgs: MISTRAL_ARGS,
  mistralCallId: MISTRAL_CALL_ID,
  pythonTag: PYTHON_TAG,
} as const;

/** Markers that open a tool call in text, per format. */
const OPENERS: Readonly<Record<ToolCallFormat, readonly string[]>> = {
  hermes: [HERMES_OPEN],
  llama3_json: [PYTHON_TAG],
  mistral: [MISTRAL_CALLS],
};

const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

function randomAlphanumeric(length: number): string {
  let id = "";
  for (let i = 0; i < length; i++) id += ID_ALPHABET[randomInt(ID_ALPHABET.length)];
  return id;
}

/** A fresh tool-call id: 9 alphanumerics for Mistral (its template refuses others), else `call_` + 24. */
export function newToolCallId(format: ToolCallFormat): string {
  return format === "mistral" ? randomAlphanumeric(9) : `call_${randomAlphanumeric(24)}`;
}

/** One piece of parsed output. Every token id pushed ends up in exactly one event, in order. */
export type OutputEvent =
  | { kind: "text"; text: string; tokenIds: number[] }
  | { kind: "reasoning"; text: string; tokenIds: number[] }
  | { kind: "tool_call"; id: string; name: string; argumentsJson: string; tokenIds: number[] };

/** Options of {@link OutputParser}. */
export interface OutputParserOptions {
  /** The model's tool-call format; null parses no tool calls (everything outside reasoning is text). */
  format: ToolCallFormat | null;
  /** Turn `<think>...</think>` at the start of the output into reasoning. */
  reasoning?: boolean;
  /** The prompt already opened `<think>` (see {@link promptOpensReasoning}): the output starts in it. */
  startInReasoning?: boolean;
  /** The tools offered; a call to any other name is text. Omitted: any name is a call. */
  toolNames?: readonly string[];
  /** Makes the id of a call whose format carries none; default {@link newToolCallId}. */
  newId?: (format: ToolCallFormat) => string;
}

/** A parsed call before it gets its id. */
interface ParsedCall {
  name: string;
  argumentsJson: string;
  id?: string;
}

/** A call being read; positions are indices in the parser's buffer, which starts with the call. */
interface CallState {
  /** The marker it opened with ("" for a Llama 3 answer that starts with `{`). */
  opener: string;
  /** Just past the opener. */
  bodyFrom: number;
  /** Where its JSON starts, once seen. */
  json?: number;
  /** Follows the JSON to its end (all formats but Hermes, whose calls end with a closing tag). */
  scanner?: JsonScanner;
  /** Where to look for Hermes's closing tag next. */
  searchFrom: number;
  /** Mistral's newer form: the name (and id) written before `[ARGS]`. */
  name?: string;
  id?: string;
}

type Mode = "start" | "answer" | "text" | "reasoning" | "call" | "afterLlamaCall";

const firstNonWs = (text: string, from = 0): number => {
  let i = from;
  while (i < text.length && /\s/.test(text[i])) i++;
  return i;
};

/** Index just past the last non-whitespace character before `end`. */
const trimEndIndex = (text: string, end: number): number => {
  let i = end;
  while (i > 0 && /\s/.test(text[i - 1])) i--;
  return i;
};

/**
 * Length of the longest suffix of `text` that could still become whitespace plus one of `markers`:
 * whitespace followed by a proper prefix (possibly empty) of a marker. That much is held back.
 */
function holdback(text: string, markers: readonly string[]): number {
  let best = 0;
  const withWs = (k: number) => text.length - trimEndIndex(text, text.length - k);
  if (markers.length > 0) best = withWs(0);
  for (const marker of markers) {
    for (let k = Math.min(marker.length - 1, text.length); k >= 1; k--) {
      if (text.endsWith(marker.slice(0, k))) {
        best = Math.max(best, withWs(k));
        break;
      }
    }
  }
  return best;
}

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

const NAME_CHARS = /^[A-Za-z0-9_.-]*$/;
const MISTRAL_ID = /^[A-Za-z0-9]{9}$/;

/**
 * Parses a model's output as it streams: `push` each detokenized delta with its token ids, `end` once
 * generation stops. Text streams as soon as it cannot be the start of a tool call (only a possible
 * prefix of an opening marker, and whitespace before it, is held back); a call is emitted once complete;
 * a call that turns out malformed (bad JSON, an unknown tool) is emitted as the text it was.
 *
 * Whitespace that only frames markers (after `<think>`, before `</think>` and a call's marker, after
 * `</think>`) is dropped from the text; its token ids go with the neighbouring event.
 */
export class OutputParser {
  private mode: Mode;
  /** Text not yet emitted or dropped; starts at absolute offset `bufStart` of the output. */
  private buf = "";
  private bufStart = 0;
  private total = 0;
  /** Pushed deltas whose ids are not yet in an event: each goes with the event holding its first char. */
  private readonly deltas: { start: number; ids: number[] }[] = [];
  /** Drop whitespace at the start of `buf` (after `<think>` or `</think>`). */
  private stripWs = false;
  /** The call being read (positions in `buf`). */
  private call: CallState | null = null;
  private ended = false;
  private readonly toolNames: ReadonlySet<string> | undefined;

  constructor(private readonly options: OutputParserOptions) {
    this.toolNames = options.toolNames && new Set(options.toolNames);
    if (options.reasoning && options.startInReasoning) {
      this.mode = "reasoning";
      this.stripWs = true;
    } else {
      this.mode = options.reasoning ? "start" : "answer";
    }
  }

  /** Adds one delta of generated text with the token ids it came from; returns what it completes. */
  push(text: string, tokenIds: readonly number[]): OutputEvent[] {
    if (this.ended) throw new Error("OutputParser.push after end()");
    if (tokenIds.length > 0) this.deltas.push({ start: this.total, ids: [...tokenIds] });
    this.total += text.length;
    this.buf += text;
    const out: OutputEvent[] = [];
    this.run(out, false);
    return out;
  }

  /** Generation has stopped: emits everything held back (an unfinished call as text). */
  end(): OutputEvent[] {
    if (this.ended) return [];
    this.ended = true;
    const out: OutputEvent[] = [];
    this.run(out, true);
    // Ids of dropped trailing whitespace or of tokens that decoded to nothing.
    const rest = this.deltas.splice(0).flatMap((d) => d.ids);
    if (rest.length > 0) {
      const last = out.at(-1);
      if (last) last.tokenIds.push(...rest);
      else out.push({ kind: "text", text: "", tokenIds: rest });
    }
    return out;
  }

  private run(out: OutputEvent[], final: boolean): void {
    while (this.step(out, final));
  }

  /** One step of the current mode; false when it needs more text. */
  private step(out: OutputEvent[], final: boolean): boolean {
    switch (this.mode) {
      case "start":
        return this.stepStart(final);
      case "reasoning":
        return this.stepReasoning(out, final);
      case "answer":
        return this.stepAnswer(final);
      case "text":
        return this.stepText(out, final);
      case "afterLlamaCall":
        return this.stepAfterLlamaCall(final);
      case "call":
        return this.stepCall(out, final);
    }
  }

  /** Takes the ids of every delta whose first character lies before `buf[upTo]`, and consumes that far. */
  private consume(upTo: number): number[] {
    const end = this.bufStart + upTo;
    const ids: number[] = [];
    while (this.deltas.length > 0 && this.deltas[0].start < end) ids.push(...this.deltas.shift()!.ids);
    this.buf = this.buf.slice(upTo);
    this.bufStart = end;
    return ids;
  }

  /** Consumes `buf[0, upTo)` without an event; the ids go with the next event. */
  private drop(upTo: number): void {
    this.bufStart += upTo;
    this.buf = this.buf.slice(upTo);
  }

  private emitText(out: OutputEvent[], kind: "text" | "reasoning", text: string, upTo: number): void {
    const tokenIds = this.consume(upTo);
    if (text.length > 0 || tokenIds.length > 0) out.push({ kind, text, tokenIds });
  }

  /** Start of output with reasoning on: `<think>` (after whitespace) opens reasoning, anything else is the answer. */
  private stepStart(final: boolean): boolean {
    const i = firstNonWs(this.buf);
    const rest = this.buf.slice(i);
    if (rest.startsWith(THINK_OPEN)) {
      this.drop(i + THINK_OPEN.length);
      this.mode = "reasoning";
      this.stripWs = true;
      return true;
    }
    if (!final && THINK_OPEN.startsWith(rest)) return false;
    this.mode = "answer";
    return true;
  }

  private stepReasoning(out: OutputEvent[], final: boolean): boolean {
    if (this.stripWs) {
      this.drop(firstNonWs(this.buf));
      if (this.buf.length === 0 && !final) return false;
      this.stripWs = false;
    }
    const close = this.buf.indexOf(THINK_CLOSE);
    if (close >= 0) {
      this.emitText(
        out,
        "reasoning",
        this.buf.slice(0, trimEndIndex(this.buf, close)),
        close + THINK_CLOSE.length,
      );
      this.mode = "answer";
      this.stripWs = true;
      return true;
    }
    const safe = final ? this.buf.length : this.buf.length - holdback(this.buf, [THINK_CLOSE]);
    if (safe > 0) this.emitText(out, "reasoning", this.buf.slice(0, safe), safe);
    return false;
  }

  /** Start of the answer: a Llama 3 answer that starts with `{` is a call; otherwise text. */
  private stepAnswer(final: boolean): boolean {
    if (this.stripWs) {
      this.drop(firstNonWs(this.buf));
      if (this.buf.length === 0 && !final) return false;
      this.stripWs = false;
    }
    if (this.options.format === "llama3_json") {
      const i = firstNonWs(this.buf);
      if (i === this.buf.length && !final) return false;
      if (this.buf[i] === "{") return this.startCall("", i);
    }
    this.mode = "text";
    return true;
  }

  private stepText(out: OutputEvent[], final: boolean): boolean {
    const markers = this.options.format === null ? [] : OPENERS[this.options.format];
    let at = -1;
    let opener = "";
    for (const marker of markers) {
      const i = this.buf.indexOf(marker);
      if (i >= 0 && (at < 0 || i < at)) [at, opener] = [i, marker];
    }
    if (at >= 0) {
      // The whitespace before the marker belongs to the call.
      const textEnd = trimEndIndex(this.buf, at);
      if (textEnd > 0) this.emitText(out, "text", this.buf.slice(0, textEnd), textEnd);
      return this.startCall(opener, at - textEnd + opener.length);
    }
    const safe = final ? this.buf.length : this.buf.length - holdback(this.buf, markers);
    if (safe > 0) this.emitText(out, "text", this.buf.slice(0, safe), safe);
    return false;
  }

  /** After a Llama 3 call: another JSON object (after whitespace or `;`) is another call. */
  private stepAfterLlamaCall(final: boolean): boolean {
    const m = /^[\s;]*/.exec(this.buf)!;
    const i = m[0].length;
    if (i === this.buf.length && !final) return false;
    if (this.buf[i] === "{") return this.startCall("", i);
    this.mode = "text";
    return true;
  }

  /** `buf` starts with the call (whitespace, the opener); what follows the opener starts at `bodyFrom`. */
  private startCall(opener: string, bodyFrom: number): boolean {
    this.call = { opener, bodyFrom, searchFrom: bodyFrom };
    this.mode = "call";
    return true;
  }

  private stepCall(out: OutputEvent[], final: boolean): boolean {
    const call = this.call!;
    if (call.json === undefined) {
      const at = firstNonWs(this.buf, call.bodyFrom);
      if (at === this.buf.length) return final ? this.fail(out, this.buf.length) : false;
      if (call.opener === MISTRAL_CALLS && this.buf[at] !== "[") return this.stepMistralHead(out, final, at);
      // Not a call after all: the marker (and what framed it) is text, and reading goes on after it.
      if (this.buf[at] !== (call.opener === MISTRAL_CALLS ? "[" : "{")) return this.fail(out, call.bodyFrom);
      call.json = at;
    }
    const json = call.json;
    if (call.opener === HERMES_OPEN) {
      const close = this.buf.indexOf(HERMES_CLOSE, call.searchFrom);
      if (close < 0) {
        call.searchFrom = Math.max(json, this.buf.length - HERMES_CLOSE.length + 1);
        // Without its closing tag a call still counts when generation stopped right after it.
        return final ? this.finish(out, this.parseObject(this.buf.slice(json)), this.buf.length) : false;
      }
      return this.finish(out, this.parseObject(this.buf.slice(json, close)), close + HERMES_CLOSE.length);
    }
    call.scanner ??= new JsonScanner(json);
    const end = call.scanner.scan(this.buf);
    if (end < 0) return final ? this.fail(out, this.buf.length) : false;
    const text = this.buf.slice(json, end);
    let calls: ParsedCall[] | null;
    if (call.opener !== MISTRAL_CALLS) calls = this.parseObject(text);
    else if (call.name === undefined) calls = this.parseList(text);
    else {
      calls = this.parseObject(`{"name": ${JSON.stringify(call.name)}, "arguments": ${text}}`);
      if (calls) calls[0].id = call.id !== undefined && MISTRAL_ID.test(call.id) ? call.id : undefined;
    }
    return this.finish(out, calls, end);
  }

  /**
   * The head of Mistral's newer form, `[TOOL_CALLS]name[ARGS]{...}` with an optional `[CALL_ID]id`
   * before `[ARGS]`: once it is complete the call's JSON is read like the others.
   */
  private stepMistralHead(out: OutputEvent[], final: boolean, nameFrom: number): boolean {
    const call = this.call!;
    const wait = (): boolean => (final ? this.fail(out, this.buf.length) : false);
    const bracket = this.buf.indexOf("[", nameFrom);
    const name = this.buf.slice(nameFrom, bracket < 0 ? this.buf.length : bracket);
    if (!NAME_CHARS.test(name) || name.length > 64) return this.fail(out, call.bodyFrom);
    if (bracket < 0) return wait();
    let argsAt: number;
    let id: string | undefined;
    if (this.buf.startsWith(MISTRAL_ARGS, bracket)) {
      argsAt = bracket + MISTRAL_ARGS.length;
    } else if (this.buf.startsWith(MISTRAL_CALL_ID, bracket)) {
      const idFrom = bracket + MISTRAL_CALL_ID.length;
      const args = this.buf.indexOf(MISTRAL_ARGS, idFrom);
      id = this.buf.slice(idFrom, args < 0 ? this.buf.length : args);
      if (!/^[A-Za-z0-9]*$/.test(args < 0 ? id.replace(/\[[A-Z]*$/, "") : id))
        return this.fail(out, call.bodyFrom);
      if (args < 0) return wait();
      argsAt = args + MISTRAL_ARGS.length;
    } else {
      const after = this.buf.slice(bracket, bracket + MISTRAL_CALL_ID.length);
      const partial = after.length < MISTRAL_CALL_ID.length && bracket + after.length === this.buf.length;
      if (partial && (MISTRAL_ARGS.startsWith(after) || MISTRAL_CALL_ID.startsWith(after))) return wait();
      return this.fail(out, call.bodyFrom);
    }
    const at = firstNonWs(this.buf, argsAt);
    if (at === this.buf.length) return wait();
    if (this.buf[at] !== "{") return this.fail(out, call.bodyFrom);
    [call.json, call.name, call.id] = [at, name, id];
    return true;
  }

  /** A complete call (or calls) read through `buf[upTo]`: emit them, or the text if they are not calls. */
  private finish(out: OutputEvent[], calls: ParsedCall[] | null, upTo: number): boolean {
    if (calls === null) return this.fail(out, upTo);
    const format = this.options.format!;
    const newId = this.options.newId ?? newToolCallId;
    calls.forEach((call, i) => {
      // The first call's event takes the ids of the whole element.
      const tokenIds = i === 0 ? this.consume(upTo) : [];
      out.push({
        kind: "tool_call",
        id: call.id ?? newId(format),
        name: call.name,
        argumentsJson: call.argumentsJson,
        tokenIds,
      });
    });
    this.mode = format === "llama3_json" ? "afterLlamaCall" : "text";
    this.call = null;
    return true;
  }

  /** What looked like a call is not one: `buf[0, upTo)` is text. */
  private fail(out: OutputEvent[], upTo: number): boolean {
    this.emitText(out, "text", this.buf.slice(0, upTo), upTo);
    this.mode = "text";
    this.call = null;
    return true;
  }

  private parseObject(json: string): ParsedCall[] | null {
    const call = this.toCall(json.trim());
    return call === null ? null : [call];
  }

  private parseList(json: string): ParsedCall[] | null {
    let value: unknown;
    try {
      value = JSON.parse(json);
    } catch {
      return null;
    }
    if (!Array.isArray(value) || value.length === 0) return null;
    const calls = topLevelSpans(json).map((span) => this.toCall(json.slice(span.start, span.end)));
    return calls.some((c) => c === null) ? null : (calls as ParsedCall[]);
  }

  /**
   * One call object: `{"name": ..., "arguments": {...}}` (Llama 3: "parameters"; Mistral may add "id").
   * The arguments may also be a JSON string holding the object; Llama 3 requires them, since its calls
   * carry no marker and a JSON answer with a "name" is no call.
   */
  private toCall(json: string): ParsedCall | null {
    let value: unknown;
    try {
      value = JSON.parse(json);
    } catch {
      return null;
    }
    if (!isObject(value) || typeof value.name !== "string" || value.name === "") return null;
    if (this.toolNames && !this.toolNames.has(value.name)) return null;
    const key = "arguments" in value ? "arguments" : "parameters" in value ? "parameters" : undefined;
    let argumentsJson = "{}";
    if (key === undefined) {
      if (this.options.format === "llama3_json") return null;
    } else if (typeof value[key] === "string") {
      let parsed: unknown;
      try {
        parsed = JSON.parse(value[key]);
      } catch {
        return null;
      }
      if (!isObject(parsed)) return null;
      argumentsJson = value[key];
    } else if (isObject(value[key])) {
      // JSON.parse keeps the last of duplicate keys; so does this.
      const span = topLevelSpans(json).findLast((s) => s.key === key)!;
      argumentsJson = json.slice(span.start, span.end);
    } else {
      return null;
    }
    const id =
      this.options.format === "mistral" && typeof value.id === "string" && MISTRAL_ID.test(value.id)
        ? value.id
        : undefined;
    return { name: value.name, argumentsJson, id };
  }
}
