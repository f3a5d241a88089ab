/**
 * Keeps the strings xgrammar generates valid JSON, and valid under their schema. xgrammar 0.1.27
 * enforces `pattern` and `minLength`/`maxLength` with character classes over the raw text between
 * the quotes, and those classes let through what JSON only allows escaped: a `pattern` with `.` or a
 * negated class can emit a raw `"` (ending the string early), a lone backslash or a control
 * character, and a length limit allows raw control characters. Its regex reader also mistakes
 * non-ASCII characters in classes for bytes. So before a schema reaches xgrammar:
 *
 * - `minLength`/`maxLength` (without `pattern`) become the pattern `[^\x00-\x1f"\\]{min,max}`;
 * - every `pattern` is rewritten over the raw JSON text: each set of characters it matches (a class,
 *   `.`, `\d`/`\w`/`\s` and their negations, a literal) is split into the characters JSON writes as
 *   they are and those it must escape, which are matched as their escapes (`\"`, `\\`, `\n`,
 *   `\u001f`...), and written in the forms xgrammar reads right (see emitSet); anchors are dropped
 *   and the whole is grouped, because xgrammar matches a pattern against the whole string (a
 *   narrowing of JSON Schema's search, so still valid);
 * - `format` is dropped beside `pattern` or a length, so that those are enforced (xgrammar would
 *   enforce the format's own pattern and skip them; format is only an annotation in JSON Schema).
 *
 * A length counts code points, as xgrammar's negated classes and JSON Schema both do; no escape is
 * generated under a length, so raw and decoded lengths agree.
 */
import { quote } from "../constraint-spec.js";
import { invalidField } from "../errors.js";
import { mapSchema } from "./schema-walk.js";

type Range = [number, number];
const MAX_CP = 0x10ffff;

/** What JSON must escape inside a string: control characters, `"` and `\`. */
const MUST_ESCAPE: Range[] = [
  [0x00, 0x1f],
  [0x22, 0x22],
  [0x5c, 0x5c],
];

const DIGIT: Range[] = [[0x30, 0x39]];
const WORD: Range[] = [
  [0x30, 0x39],
  [0x41, 0x5a],
  [0x5f, 0x5f],
  [0x61, 0x7a],
];
const SPACE: Range[] = [
  [0x09, 0x0d],
  [0x20, 0x20],
  [0xa0, 0xa0],
  [0x1680, 0x1680],
  [0x2000, 0x200a],
  [0x2028, 0x2029],
  [0x202f, 0x202f],
  [0x205f, 0x205f],
  [0x3000, 0x3000],
  [0xfeff, 0xfeff],
];
const LINE_ENDS: Range[] = [
  [0x0a, 0x0a],
  [0x0d, 0x0d],
  [0x2028, 0x2029],
];

function normalize(ranges: Range[]): Range[] {
  const sorted = ranges.filter(([a, b]) => a <= b).sort((x, y) => x[0] - y[0]);
  const out: Range[] = [];
  for (const [a, b] of sorted) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

function complement(ranges: Range[]): Range[] {
  const out: Range[] = [];
  let next = 0;
  for (const [a, b] of normalize(ranges)) {
    if (a > next) out.push([next, a - 1]);
    next = b + 1;
  }
  if (next <= MAX_CP) out.push([next, MAX_CP]);
  return out;
}

const intersect = (x: Range[], y: Range[]) => complement([...complement(x), ...complement(y)]);
const subtract = (x: Range[], y: Range[]) => intersect(x, complement(y));

/** A character xgrammar's regex reader takes as it is, or its escape (ASCII only: see emitSet). */
function regexChar(cp: number, inClass: boolean): string {
  if (cp < 0x20 || cp === 0x7f) return `\\x${cp.toString(16).padStart(2, "0")}`;
  const ch = String.fromCharCode(cp);
  const special = inClass ? "\\]^-[" : "\\^$.|?*+()[]{}/";
  return special.includes(ch) ? `\\${ch}` : ch;
}

/** The JSON escape of a character JSON must escape. */
function jsonEscape(cp: number): string {
  const short: Record<number, string> = {
    0x22: '"',
    0x5c: "\\",
    0x08: "b",
    0x0c: "f",
    0x0a: "n",
    0x0d: "r",
    0x09: "t",
  };
  return "\\" + (short[cp] ?? `u${cp.toString(16).padStart(4, "0")}`);
}

const ASCII: Range[] = [[0x00, 0x7f]];
const NON_ASCII: Range[] = [[0x80, MAX_CP]];
const LINE_SEPARATORS: Range[] = [[0x2028, 0x2029]];
const classBody = (ranges: Range[]) =>
  ranges
    .map(([a, b]) => (a === b ? regexChar(a, true) : `${regexChar(a, true)}-${regexChar(b, true)}`))
    .join("");

/** A set of characters that cannot be generated (see emitSet). */
export class PatternError extends Error {}

/**
 * A regex, over raw JSON text, matching one character of `set` as JSON writes it: the characters
 * JSON writes as they are in one class, the others as alternatives of their escapes.
 *
 * xgrammar 0.1.27 reads non-ASCII characters in a class wrongly (a positive class, or a negated one
 * that names them, matches bytes rather than characters), and reads an ASCII-only negated class
 * right. So a set holding every non-ASCII character becomes `[^<ASCII it lacks>]`; unless `exact`
 * (a strict schema), one holding every non-ASCII character but the line separators U+2028/U+2029
 * (`.`) does too, letting those two through; any other set keeps only its ASCII characters (a
 * narrowing), and one left with none is refused.
 */
function emitSet(set: Range[], exact: boolean): string {
  const ranges = normalize(set);
  const parts: string[] = [];
  const plain = subtract(ranges, MUST_ESCAPE);
  const ascii = intersect(plain, ASCII);
  const missingNonAscii = subtract(NON_ASCII, plain);
  if (plain.length === 1 && plain[0][0] === plain[0][1] && plain[0][0] >= 0x80) {
    // One character: a literal, which xgrammar reads right (unlike a class).
    parts.push(String.fromCodePoint(plain[0][0]));
  } else if (subtract(missingNonAscii, exact ? [] : LINE_SEPARATORS).length === 0) {
    parts.push(`[^${classBody(intersect(complement(ascii), ASCII))}]`);
  } else if (ascii.length === 1 && ascii[0][0] === ascii[0][1]) parts.push(regexChar(ascii[0][0], false));
  else if (ascii.length > 0) parts.push(`[${classBody(ascii)}]`);
  const escaped = intersect(ranges, MUST_ESCAPE);
  const controls = intersect(escaped, [[0x00, 0x1f]]);
  if (controls.length === 1 && controls[0][0] === 0 && controls[0][1] === 0x1f) {
    parts.push("\\\\[bfnrt]", "\\\\u00[01][0-9a-f]");
    escaped.splice(0, 1);
  }
  for (const [a, b] of escaped) {
    for (let cp = a; cp <= b; cp++) {
      parts.push([...jsonEscape(cp)].map((c) => regexChar(c.charCodeAt(0), false)).join(""));
    }
  }
  if (parts.length === 0) {
    throw new PatternError(
      "a character set of the pattern holds only characters the decoder cannot generate",
    );
  }
  return parts.length === 1 ? parts[0] : `(?:${parts.join("|")})`;
}

/** The set of a `\d`-style shorthand, or undefined. */
function shorthand(letter: string): Range[] | undefined {
  const base = { d: DIGIT, w: WORD, s: SPACE }[letter.toLowerCase()];
  if (!base) return undefined;
  return letter === letter.toLowerCase() ? base : complement(base);
}

const CONTROL_ESCAPES: Record<string, number> = { n: 0x0a, r: 0x0d, t: 0x09, f: 0x0c, v: 0x0b };

/** Reads the escape at chars[i] (a backslash): a set of characters, or text to copy as it is. */
function readEscape(
  chars: string[],
  i: number,
  inClass: boolean,
): { set?: Range[]; raw?: string; end: number } {
  const c = chars[i + 1] ?? "\\";
  const hex = (from: number, n: number) => {
    const h = chars.slice(from, from + n).join("");
    return /^[0-9a-fA-F]+$/.test(h) && h.length === n ? parseInt(h, 16) : undefined;
  };
  const one = (cp: number, end: number) => ({ set: [[cp, cp]] as Range[], end });
  const sh = shorthand(c);
  if (sh) return { set: sh, end: i + 2 };
  if (c in CONTROL_ESCAPES) return one(CONTROL_ESCAPES[c], i + 2);
  if (c === "0" && !/[0-9]/.test(chars[i + 2] ?? "")) return one(0, i + 2);
  if (c === "b" && inClass) return one(0x08, i + 2);
  if (c === "x" && hex(i + 2, 2) !== undefined) return one(hex(i + 2, 2)!, i + 4);
  if (c === "c" && /[a-zA-Z]/.test(chars[i + 2] ?? "")) return one(chars[i + 2].charCodeAt(0) % 32, i + 3);
  if (c === "u" && chars[i + 2] === "{") {
    const close = chars.indexOf("}", i + 3);
    const cp = close > 0 ? parseInt(chars.slice(i + 3, close).join(""), 16) : NaN;
    if (Number.isInteger(cp) && cp <= MAX_CP) return one(cp, close + 1);
  }
  if (c === "u" && hex(i + 2, 4) !== undefined) {
    const hi = hex(i + 2, 4)!;
    const lo = chars[i + 6] === "\\" && chars[i + 7] === "u" ? hex(i + 8, 4) : undefined;
    if (hi >= 0xd800 && hi <= 0xdbff && lo !== undefined && lo >= 0xdc00 && lo <= 0xdfff) {
      return one(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00), i + 12);
    }
    return one(hi, i + 6);
  }
  // Boundaries, back references, property classes: xgrammar's own error explains what it cannot do.
  if (!inClass && /[bBkpP1-9]/.test(c)) return { raw: `\\${c}`, end: i + 2 };
  return one(c.codePointAt(0)!, i + 2);
}

/** Reads the class starting at chars[i] ("["): its set of characters and where it ends. */
function readClass(chars: string[], i: number): { set: Range[]; end: number } {
  let j = i + 1;
  const negated = chars[j] === "^";
  if (negated) j++;
  const items: Range[] = [];
  const single = (): { cp?: number; set?: Range[] } => {
    if (chars[j] === "\\") {
      const e = readEscape(chars, j, true);
      j = e.end;
      const set = e.set ?? [];
      return set.length === 1 && set[0][0] === set[0][1] ? { cp: set[0][0] } : { set };
    }
    return { cp: chars[j++].codePointAt(0)! };
  };
  while (j < chars.length && chars[j] !== "]") {
    const first = single();
    if (first.cp !== undefined && chars[j] === "-" && chars[j + 1] !== "]" && j + 1 < chars.length) {
      j++;
      const last = single();
      if (last.cp !== undefined) items.push([first.cp, last.cp]);
      else items.push([first.cp, first.cp], [0x2d, 0x2d], ...(last.set ?? []));
    } else if (first.cp !== undefined) items.push([first.cp, first.cp]);
    else items.push(...(first.set ?? []));
  }
  return { set: negated ? complement(items) : normalize(items), end: j + 1 };
}

/** A JSON Schema `pattern` rewritten to match the raw JSON text of a valid string (see the top). */
export function jsonSafePattern(pattern: string, exact = false): string {
  const chars = Array.from(pattern);
  let out = "";
  for (let i = 0; i < chars.length;) {
    const c = chars[i];
    if (c === "\\") {
      const e = readEscape(chars, i, false);
      out += e.raw ?? emitSet(e.set!, exact);
      i = e.end;
    } else if (c === "[") {
      const cls = readClass(chars, i);
      out += emitSet(cls.set, exact);
      i = cls.end;
    } else if (c === ".") {
      out += emitSet(complement(LINE_ENDS), exact);
      i++;
    } else if (c === "^" || c === "$") i++;
    else if (c === "{" && /^\{\d+(,\d*)?\}/.test(chars.slice(i, i + 24).join(""))) {
      const close = chars.indexOf("}", i);
      out += chars.slice(i, close + 1).join("");
      i = close + 1;
    } else if ("()|*+?".includes(c)) {
      out += c;
      i++;
    } else {
      const cp = c.codePointAt(0)!;
      out += emitSet([[cp, cp]], exact);
      i++;
    }
  }
  return `(?:${out})`;
}

const isStringSchema = (node: Record<string, unknown>) =>
  node.type === "string" || (Array.isArray(node.type) && node.type.includes("string"));

/**
 * A copy of `schema` whose strings xgrammar can only generate as valid JSON (see the top); `exact`
 * for a strict schema. A pattern that cannot be rewritten throws INVALID_ARGUMENT naming `field`.
 */
export function jsonSafeStrings(schema: unknown, field: string, exact: boolean): unknown {
  const safeString = (node: Record<string, unknown>) => {
    try {
      return safeStringNode(node, exact);
    } catch (err) {
      if (!(err instanceof PatternError)) throw err;
      throw invalidField(field, `pattern ${quote(node.pattern)}: ${err.message}`);
    }
  };
  return mapSchema(schema, (node) => {
    // xgrammar reads propertyNames as a string schema whether it says so or not.
    const names = node.propertyNames;
    if (typeof names === "object" && names !== null && !Array.isArray(names)) {
      const n = names as Record<string, unknown>;
      if (!isStringSchema(n)) node.propertyNames = safeString({ ...n, type: "string" });
    }
    return isStringSchema(node) ? safeString(node) : node;
  });
}

function safeStringNode(node: Record<string, unknown>, exact: boolean): Record<string, unknown> {
  const { minLength, maxLength } = node;
  if (typeof node.pattern === "string") {
    node.pattern = jsonSafePattern(node.pattern, exact);
  } else if (typeof minLength === "number" || typeof maxLength === "number") {
    const min = typeof minLength === "number" ? minLength : 0;
    node.pattern = `${emitSet(complement(MUST_ESCAPE), exact)}{${min},${typeof maxLength === "number" ? maxLength : ""}}`;
  } else return node;
  delete node.minLength;
  delete node.maxLength;
  delete node.format;
  return node;
}
