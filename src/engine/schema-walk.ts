/** Walking the subschemas of a JSON Schema. */

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** Keywords whose value is a map of names to schemas, a schema (or an old-style list), a list of schemas. */
const SCHEMA_MAPS = new Set(["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"]);
const SCHEMA_VALUES = new Set([
  "items",
  "additionalItems",
  "additionalProperties",
  "unevaluatedProperties",
  "unevaluatedItems",
  "propertyNames",
  "contains",
  "not",
  "if",
  "then",
  "else",
  "contentSchema",
]);
const SCHEMA_LISTS = new Set(["allOf", "anyOf", "oneOf", "prefixItems"]);

/**
 * A copy of a schema with `f` applied to every schema object in it, innermost first (`f` gets a fresh
 * copy it may change). Only schema keywords are walked: `const`, `enum`, `default` and `examples` are
 * values and are copied as they are.
 */
export function mapSchema(schema: unknown, f: (node: Json) => Json): unknown {
  if (!isObject(schema)) return schema;
  const out: Json = {};
  for (const [k, v] of Object.entries(schema)) {
    if (SCHEMA_MAPS.has(k) && isObject(v)) {
      out[k] = Object.fromEntries(Object.entries(v).map(([name, s]) => [name, mapSchema(s, f)]));
    } else if ((SCHEMA_VALUES.has(k) || SCHEMA_LISTS.has(k)) && Array.isArray(v)) {
      out[k] = v.map((s) => mapSchema(s, f));
    } else if (SCHEMA_VALUES.has(k)) out[k] = mapSchema(v, f);
    else out[k] = v;
  }
  return f(out);
}
