/**
 * Grammars for numbers and integers with bounds. xgrammar 0.1.27 turns `minimum`/`maximum` into
 * patterns that let through values out of range (136 under `maximum: 130`, -1.5 under `minimum: -1`),
 * an excluded bound, or text that is not JSON at all (`0x5` for `minimum: 0.5`: an unescaped "." in
 * its regex). So every bounded `number` and `integer` of a schema is replaced by a placeholder
 * `const` before xgrammar converts the schema; in the EBNF it produces, each placeholder's literal is
 * then replaced by a rule of this module.
 *
 * The numbers generated: JSON syntax without exponent, integers without fraction, other numbers with
 * at most FRACTION_DIGITS_MAX decimals, every value in range (bounds with more decimals are rounded
 * inwards; a range holding no such number is refused). Values are compared exactly, in millionths,
 * as BigInt.
 */
import { mapSchema } from "./schema-walk.js";

export const FRACTION_DIGITS_MAX = 6;
const SCALE = 10n ** BigInt(FRACTION_DIGITS_MAX);
const BOUNDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] as const;

/** A JSON number (as JavaScript's shortest decimal form writes it) in millionths, rounded up or down. */
export function toMillionths(value: number, round: "up" | "down"): bigint {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:e([+-]?\d+))?$/.exec(String(value));
  if (!m) throw new RangeError(`not a finite number: ${value}`);
  const [, sign, int, frac = "", exp = "0"] = m;
  const shift = Number(exp) + FRACTION_DIGITS_MAX - frac.length;
  const digits = BigInt(int + frac);
  let scaled: bigint;
  let exact = true;
  if (shift >= 0) scaled = digits * 10n ** BigInt(shift);
  else {
    const div = 10n ** BigInt(-shift);
    scaled = digits / div;
    exact = digits % div === 0n;
  }
  const negative = sign === "-";
  if (!exact && (round === "up") !== negative) scaled += 1n;
  return negative ? -scaled : scaled;
}

const nines = (n: number) => "9".repeat(n);
const zeros = (n: number) => "0".repeat(n);
const alt = (parts: string[]) => (parts.length === 1 ? parts[0] : `(${parts.join(" | ")})`);
const digitRange = (a: number, b: number) => (a === b ? `"${a}"` : `[${a}-${b}]`);
const anyDigits = (n: number) => (n === 0 ? "" : n === 1 ? "[0-9]" : `[0-9]{${n}}`);

/** EBNF for the digit strings of length x.length from x to y (same length, x <= y). */
function fixedRange(x: string, y: string): string {
  if (x.length === 0) return '""';
  if (x === zeros(x.length) && y === nines(y.length)) return anyDigits(x.length);
  const [a, b] = [Number(x[0]), Number(y[0])];
  const rest = x.length - 1;
  if (a === b) return rest ? `"${a}" ${fixedRange(x.slice(1), y.slice(1))}` : `"${a}"`;
  if (rest === 0) return digitRange(a, b);
  const parts: string[] = [];
  const lowFull = x.slice(1) === zeros(rest);
  const highFull = y.slice(1) === nines(rest);
  const midLo = lowFull ? a : a + 1;
  const midHi = highFull ? b : b - 1;
  if (!lowFull) parts.push(`"${a}" ${fixedRange(x.slice(1), nines(rest))}`);
  if (midLo <= midHi) parts.push(`${digitRange(midLo, midHi)} ${anyDigits(rest)}`);
  if (!highFull) parts.push(`"${b}" ${fixedRange(zeros(rest), y.slice(1))}`);
  return alt(parts);
}

/** EBNF for canonical non-negative integers (no leading zeros) from lo to hi (undefined: no limit). */
function intRange(lo: bigint, hi: bigint | undefined): string {
  const parts: string[] = [];
  const loLen = lo.toString().length;
  const maxLen = hi === undefined ? loLen : hi.toString().length;
  for (let len = loLen; len <= maxLen; len++) {
    const first = len === 1 ? 0n : 10n ** BigInt(len - 1);
    const last = 10n ** BigInt(len) - 1n;
    const a = lo > first ? lo : first;
    const b = hi !== undefined && hi < last ? hi : last;
    if (a <= b) parts.push(fixedRange(a.toString(), b.toString()));
  }
  if (hi === undefined) parts.push(`[1-9] [0-9]{${maxLen},}`);
  return alt(parts);
}

/**
 * EBNF for the decimals d1..dk (1 <= k <= 6) whose value 0.d1..dk, padded to six digits, lies in
 * [lo, hi] (six-digit strings); with `allowEmpty`, also "" when lo is all zeros.
 */
function fractionRange(lo: string, hi: string, allowEmpty: boolean): string | undefined {
  const n = lo.length;
  if (n > 0 && lo === zeros(n) && hi === nines(n)) return `[0-9]{${allowEmpty ? 0 : 1},${n}}`;
  const parts: string[] = [];
  if (allowEmpty && lo === zeros(lo.length)) parts.push('""');
  if (lo.length === 0) return parts.length ? alt(parts) : undefined;
  const [a, b] = [Number(lo[0]), Number(hi[0])];
  const rest = lo.length - 1;
  const anyRest = rest ? ` [0-9]{0,${rest}}` : "";
  if (a === b) {
    const tail = fractionRange(lo.slice(1), hi.slice(1), true);
    if (tail !== undefined) parts.push(tail === '""' ? `"${a}"` : `"${a}" ${tail}`);
  } else {
    const low = fractionRange(lo.slice(1), nines(rest), true);
    if (low !== undefined) parts.push(low === '""' ? `"${a}"` : `"${a}" ${low}`);
    if (a + 1 <= b - 1) parts.push(`${digitRange(a + 1, b - 1)}${anyRest}`);
    const high = fractionRange(zeros(rest), hi.slice(1), true);
    if (high !== undefined) parts.push(high === '""' ? `"${b}"` : `"${b}" ${high}`);
  }
  return parts.length ? alt(parts) : undefined;
}

const frac6 = (m: bigint) => (m % SCALE).toString().padStart(FRACTION_DIGITS_MAX, "0");

/** EBNF for non-negative decimals whose value in millionths lies in [lo, hi] (hi undefined: no limit). */
function magnitudeRange(lo: bigint, hi: bigint | undefined): string {
  const loInt = lo / SCALE;
  const parts: string[] = [];
  const withFraction = (int: string, fLo: string, fHi: string) => {
    const f = fractionRange(fLo, fHi, false);
    const optional = fLo === zeros(FRACTION_DIGITS_MAX);
    if (f === undefined) return optional ? int : undefined;
    return optional ? `${int} ("" | "." ${f})` : `${int} "." ${f}`;
  };
  const push = (p: string | undefined) => p !== undefined && parts.push(p);
  if (hi !== undefined && hi / SCALE === loInt) {
    push(withFraction(intRange(loInt, loInt), frac6(lo), frac6(hi)));
    return alt(parts);
  }
  push(withFraction(intRange(loInt, loInt), frac6(lo), nines(FRACTION_DIGITS_MAX)));
  const hiInt = hi === undefined ? undefined : hi / SCALE;
  if (hiInt === undefined || loInt + 1n <= hiInt - 1n) {
    push(
      withFraction(intRange(loInt + 1n, hiInt === undefined ? undefined : hiInt - 1n), zeros(6), nines(6)),
    );
  }
  if (hi !== undefined) push(withFraction(intRange(hiInt!, hiInt!), zeros(FRACTION_DIGITS_MAX), frac6(hi)));
  return alt(parts);
}

/** EBNF for the integers within a schema's bounds; undefined when none is. */
function integerRangeEbnf(schema: Record<string, unknown>): string | undefined {
  const big = (k: string, round: (x: number) => number, shift: bigint) =>
    typeof schema[k] === "number" ? BigInt(round(schema[k] as number)) + shift : undefined;
  const los = [big("minimum", Math.ceil, 0n), big("exclusiveMinimum", Math.floor, 1n)];
  const his = [big("maximum", Math.floor, 0n), big("exclusiveMaximum", Math.ceil, -1n)];
  const lo = los.reduce((a, b) => (a === undefined || (b !== undefined && b > a) ? b : a));
  const hi = his.reduce((a, b) => (a === undefined || (b !== undefined && b < a) ? b : a));
  if (lo !== undefined && hi !== undefined && lo > hi) return undefined;
  const parts: string[] = [];
  if (lo === undefined || lo < 0n) {
    parts.push(
      `"-" ${intRange(hi === undefined || hi >= 0n ? 1n : -hi, lo === undefined ? undefined : -lo)}`,
    );
  }
  if (hi === undefined || hi >= 0n) parts.push(intRange(lo === undefined || lo < 0n ? 0n : lo, hi));
  return alt(parts);
}

/**
 * EBNF for the values within a schema's bounds: integers when its types name "integer" and not
 * "number", numbers otherwise; undefined when no value fits them.
 */
export function numberRangeEbnf(schema: Record<string, unknown>): string | undefined {
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  if (!types.includes("number")) return integerRangeEbnf(schema);
  const num = (k: string) => (typeof schema[k] === "number" ? (schema[k] as number) : undefined);
  const min = num("minimum");
  const xmin = num("exclusiveMinimum");
  const max = num("maximum");
  const xmax = num("exclusiveMaximum");
  let lo: bigint | undefined;
  let hi: bigint | undefined;
  if (min !== undefined) lo = toMillionths(min, "up");
  if (xmin !== undefined) {
    const m = toMillionths(xmin, "down") + 1n;
    lo = lo === undefined || m > lo ? m : lo;
  }
  if (max !== undefined) hi = toMillionths(max, "down");
  if (xmax !== undefined) {
    const m = toMillionths(xmax, "up") - 1n;
    hi = hi === undefined || m < hi ? m : hi;
  }
  if (lo !== undefined && hi !== undefined && lo > hi) return undefined;
  const parts: string[] = [];
  // Negative values: "-" and a magnitude of at least one millionth (no "-0").
  if (lo === undefined || lo < 0n) {
    const magLo = hi === undefined || hi >= 0n ? 1n : -hi;
    parts.push(`"-" ${magnitudeRange(magLo, lo === undefined ? undefined : -lo)}`);
  }
  if (hi === undefined || hi >= 0n) parts.push(magnitudeRange(lo === undefined || lo < 0n ? 0n : lo, hi));
  return alt(parts);
}

/**
 * A copy of `schema` with each bounded `number` replaced by a placeholder, and the rules to put in
 * their place: `substitute(ebnf)` swaps the placeholders' literals in xgrammar's EBNF for rule
 * references and appends the rules. `fail` reports a range no number fits.
 */
export function boundedNumbers(
  schema: unknown,
  fail: (problem: string) => never,
): { schema: unknown; substitute: (ebnf: string) => string } {
  // A suffix no string of the schema contains, so no rule name can clash with its text; chosen from
  // the schema alone, so that the same schema always compiles to the same grammar.
  const text = JSON.stringify(schema) ?? "";
  let nonce = "q";
  while (text.includes(nonce)) nonce += "q";
  const rules = new Map<string, string>();
  const mapped = mapSchema(schema, (node) => {
    const types = Array.isArray(node.type) ? node.type : [node.type];
    const numeric = types.includes("number") || types.includes("integer");
    if (!numeric || !BOUNDS.some((k) => typeof node[k] === "number")) return node;
    const rule = `kvpark_number_${rules.size}_${nonce}`;
    const ebnf = numberRangeEbnf(node);
    if (ebnf === undefined) fail("no number of the kind generated lies within its bounds");
    rules.set(rule, ebnf!);
    const placeholder = { const: rule };
    const others = types.filter((t) => t !== "number" && t !== "integer");
    if (others.length === 0) return placeholder;
    const rest: Record<string, unknown> = { ...node, type: others };
    for (const k of BOUNDS) delete rest[k];
    return { anyOf: [placeholder, rest] };
  });
  const substitute = (ebnf: string) => {
    let out = ebnf;
    for (const [rule, body] of rules) out = out.split(`"\\"${rule}\\""`).join(rule) + `\n${rule} ::= ${body}`;
    return out;
  };
  return { schema: mapped, substitute };
}
