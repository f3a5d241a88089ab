// Client input quoted in error messages, cut to a length no client's metadata limit minds.

/** Characters (code points) of one piece of client input that an error message quotes at most. */
export const ECHO_CHARS_MAX = 40;

/** Code points of `text`, counted up to `limit` (a longer text reports `limit`). */
export function codePoints(text: string, limit = Infinity): number {
  let n = 0;
  for (let i = 0; i < text.length && n < limit; i++, n++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) i++;
  }
  return n;
}

/**
 * A piece of client input (a model name, a handle, a path) as an error message quotes it: in JSON
 * quotes, cut after ECHO_CHARS_MAX code points with the full length added, so that a huge value
 * cannot swell a status message past the client's metadata limit.
 */
export function quoted(value: string): string {
  if (value.length <= ECHO_CHARS_MAX) return JSON.stringify(value);
  let cut = "";
  let n = 0;
  for (const c of value) {
    if (n++ === ECHO_CHARS_MAX) return `${JSON.stringify(cut + "…")} (${codePoints(value)} characters)`;
    cut += c;
  }
  return JSON.stringify(value);
}

/** A field name the client chose (an unknown key), as an error message names it: cut like quoted(). */
export function clientField(name: string): string {
  return name.length <= ECHO_CHARS_MAX ? name : quoted(name);
}
