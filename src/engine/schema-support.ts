/**
 * What of a JSON Schema the constrained decoder can enforce. xgrammar turns a schema into a grammar
 * but silently skips the keywords a context-free grammar cannot express (and aborts on a few
 * malformed ones), so every schema is walked here first:
 *
 * - always refused: what would make xgrammar abort or could never be met (`false`, an unknown type,
 *   a `$ref` that points nowhere, an empty `enum`, `items` as a list, nesting deeper than 64 levels);
 * - with `strict`, also every validation keyword xgrammar would skip, so that the output is refused
 *   up front rather than allowed to break the schema: `not`, `if`/`then`/`else`, `dependentRequired`,
 *   `dependentSchemas`, `dependencies`, `multipleOf`, `uniqueItems`, `contains`, `minContains`,
 *   `maxContains`, `oneOf` or `allOf` with more than one schema, keywords beside `$ref` or beside
 *   `anyOf`/`oneOf`/`allOf`, a `$ref` outside the document, `pattern` together with
 *   `minLength`/`maxLength`, `required` names missing from `properties`, and type-specific keywords
 *   in a schema that names no type.
 *
 * Annotations (`title`, `description`, `default`, `examples`...) and `format` (an annotation unless a
 * validator opts in) are never refused. Whatever xgrammar enforces it enforces exactly or more
 * narrowly (properties not listed are not generated; `pattern` matches the whole string).
 */
import { quote } from "../constraint-spec.js";
import { invalidField } from "../errors.js";
import { FRACTION_DIGITS_MAX, numberRangeEbnf } from "./number-grammar.js";

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

const TYPES = new Set(["string", "number", "integer", "boolean", "null", "array", "object"]);
const DEPTH_MAX = 64;

/** Keywords that never change which values are valid (plus the containers of definitions). */
const INERT = new Set([
  "title",
  "description",
  "default",
  "examples",
  "deprecated",
  "readOnly",
  "writeOnly",
  "$comment",
  "$schema",
  "$id",
  "$anchor",
  "$defs",
  "definitions",
  "format",
  "contentEncoding",
  "contentMediaType",
  "contentSchema",
]);

/** Keywords xgrammar never enforces. */
const NEVER_ENFORCED = [
  "not",
  "if",
  "then",
  "else",
  "dependentRequired",
  "dependentSchemas",
  "dependencies",
  "multipleOf",
  "uniqueItems",
  "contains",
  "minContains",
  "maxContains",
  "$dynamicRef",
  "$recursiveRef",
];

/** Keywords that make xgrammar treat a schema as one of a kind (see its VisitSchema). */
const DISPATCH = [
  "$ref",
  "const",
  "enum",
  "anyOf",
  "oneOf",
  "allOf",
  "type",
  "properties",
  "additionalProperties",
  "unevaluatedProperties",
  "items",
  "prefixItems",
  "unevaluatedItems",
];

/** Keywords that constrain one type only: skipped by xgrammar when no keyword of DISPATCH is there. */
const TYPE_SPECIFIC = [
  "minLength",
  "maxLength",
  "pattern",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
  "minItems",
  "maxItems",
  "required",
  "minProperties",
  "maxProperties",
  "patternProperties",
  "propertyNames",
];

/** Where a node sits in the schema, for messages: "the schema" or "properties.name.items". */
const where = (at: string[]) => (at.length ? `at ${at.join(".")}` : "at the top level");

/** A local `$ref` resolved the way xgrammar resolves it: "/"-separated names from the root. */
function resolves(root: unknown, ref: string): boolean {
  if (ref === "#") return true;
  let node = root;
  for (const part of ref.slice(2).split("/")) {
    if (part === "") continue;
    if (!isObject(node) || !Object.hasOwn(node, part)) return false;
    node = node[part];
  }
  return true;
}

/**
 * Throws INVALID_ARGUMENT naming `field` when the schema cannot be compiled, or, with `strict`, when
 * it uses a feature the decoder would not enforce.
 */
export function checkSchema(schema: unknown, field: string, strict: boolean): void {
  const fail = (problem: string): never => {
    throw invalidField(field, problem);
  };
  const refuse = (what: string, at: string[]) => {
    if (strict)
      fail(`${what} ${where(at)} cannot be enforced while decoding; remove it or set strict to false`);
  };

  const visit = (node: unknown, at: string[]): void => {
    if (at.length > DEPTH_MAX) fail(`nested deeper than ${DEPTH_MAX} levels`);
    if (node === true) return;
    if (node === false) fail(`the schema ${where(at)} is false, which no value satisfies`);
    if (!isObject(node)) fail(`the schema ${where(at)} must be an object or a boolean`);
    const s = node as Json;
    const has = (k: string) => Object.hasOwn(s, k);
    const sub = (v: unknown, ...path: string[]) => visit(v, [...at, ...path]);
    const list = (k: string): unknown[] => {
      const v = s[k];
      if (!Array.isArray(v) || v.length === 0) fail(`${k} ${where(at)} must be a non-empty list`);
      return v as unknown[];
    };
    const map = (k: string): Json => {
      const v = s[k];
      if (!isObject(v)) fail(`${k} ${where(at)} must be an object`);
      return v as Json;
    };
    const siblings = () => Object.keys(s).filter((k) => !INERT.has(k));

    for (const k of NEVER_ENFORCED) {
      if (has(k) && !(k === "uniqueItems" && s[k] === false)) refuse(k, at);
    }
    for (const k of ["$defs", "definitions"]) {
      if (has(k)) for (const [name, d] of Object.entries(map(k))) sub(d, k, name);
    }
    if (has("$ref")) {
      const ref = s.$ref;
      if (typeof ref !== "string") fail(`$ref ${where(at)} must be a string`);
      const r = ref as string;
      if (r === "#" || r.startsWith("#/")) {
        if (!resolves(root, r)) fail(`$ref ${quote(r)} ${where(at)} points to nothing in the schema`);
      } else refuse(`a $ref outside the schema (${quote(r)})`, at);
      if (siblings().length > 1) refuse("keywords beside $ref", at);
      return;
    }
    if (has("const")) return;
    if (has("enum")) return void list("enum");
    for (const k of ["anyOf", "oneOf", "allOf"]) {
      if (!has(k)) continue;
      const options = list(k);
      if (k !== "anyOf" && options.length > 1) refuse(`${k} with more than one schema`, at);
      if (siblings().length > 1) refuse(`keywords beside ${k}`, at);
      options.forEach((o, i) => sub(o, k, String(i)));
      return;
    }
    if (has("type")) {
      const types = Array.isArray(s.type) ? s.type : [s.type];
      for (const t of types) {
        if (typeof t !== "string" || !TYPES.has(t)) fail(`unknown type ${quote(t)} ${where(at)}`);
      }
    } else if (!DISPATCH.some(has)) {
      const skipped = TYPE_SPECIFIC.find(has);
      if (skipped) refuse(`${skipped} in a schema without a type`, at);
    }
    const types = Array.isArray(s.type) ? s.type : [s.type];
    const bounded = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"].some(has);
    const numeric = types.includes("number") || types.includes("integer");
    if (bounded && numeric && numberRangeEbnf(s) === undefined) {
      const what = types.includes("number")
        ? `number with at most ${FRACTION_DIGITS_MAX} decimals`
        : "integer";
      fail(`no ${what} lies within the bounds ${where(at)}`);
    }
    if (has("pattern") && (has("minLength") || has("maxLength")))
      refuse("pattern together with minLength or maxLength", at);
    if (has("properties"))
      for (const [name, p] of Object.entries(map("properties"))) sub(p, "properties", name);
    if (has("patternProperties")) {
      for (const [name, p] of Object.entries(map("patternProperties"))) sub(p, "patternProperties", name);
    }
    for (const k of ["additionalProperties", "unevaluatedProperties", "propertyNames", "unevaluatedItems"]) {
      if (has(k) && s[k] !== false) sub(s[k], k);
    }
    if (has("required")) {
      const req = s.required;
      if (!Array.isArray(req) || req.some((r) => typeof r !== "string")) {
        fail(`required ${where(at)} must be a list of names`);
      }
      const props = isObject(s.properties) ? s.properties : {};
      const missing = (req as string[]).find((r) => !Object.hasOwn(props, r));
      if (missing !== undefined) refuse(`required name ${quote(missing)} missing from properties`, at);
    }
    if (has("items")) {
      if (Array.isArray(s.items)) fail(`items ${where(at)} is a list (the old tuple form): use prefixItems`);
      if (s.items !== false) sub(s.items, "items");
    }
    if (has("prefixItems")) list("prefixItems").forEach((p, i) => sub(p, "prefixItems", String(i)));
  };
  const root = schema;
  visit(schema, []);
}
