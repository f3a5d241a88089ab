/**
 * Finding where JSON text ends while it streams in, and where the members of a parsed object lie in its
 * text, so tool-call arguments are passed on exactly as the model wrote them (JSON.parse then
 * JSON.stringify would round big integers and rewrite numbers such as 1.0).
 */

/** Follows one JSON object or array as its text grows and tells where it closes. */
export class JsonScanner {
  private pos: number;
  private depth = 0;
  private inString = false;
  private escaped = false;

  /** `start` is the index of the opening `{` or `[` in the text given to {@link scan}. */
  constructor(start: number) {
    this.pos = start;
  }

  /**
   * Scans `text` (the same text, possibly longer than last time) from where the last call stopped.
   * Returns the index just past the closing bracket, or -1 while the value is still open. The text
   * need not be valid JSON; brackets are matched by nesting only.
   */
  scan(text: string): number {
    for (; this.pos < text.length; this.pos++) {
      const c = text[this.pos];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === "\\") this.escaped = true;
        else if (c === '"') this.inString = false;
      } else if (c === '"') {
        this.inString = true;
      } else if (c === "{" || c === "[") {
        this.depth++;
      } else if ((c === "}" || c === "]") && --this.depth === 0) {
        return ++this.pos;
      }
    }
    return -1;
  }
}

/** One member of an object (with its key) or element of an array: [start, end) in the text. */
export interface JsonSpan {
  key?: string;
  start: number;
  end: number;
}

const isWs = (c: string | undefined): boolean => c === " " || c === "\t" || c === "\n" || c === "\r";

function skipWs(text: string, i: number): number {
  while (isWs(text[i])) i++;
  return i;
}

function stringEnd(text: string, i: number): number {
  for (let j = i + 1; j < text.length; j++) {
    if (text[j] === "\\") j++;
    else if (text[j] === '"') return j + 1;
  }
  return text.length;
}

function valueEnd(text: string, i: number): number {
  const c = text[i];
  if (c === '"') return stringEnd(text, i);
  if (c === "{" || c === "[") {
    const end = new JsonScanner(i).scan(text);
    return end < 0 ? text.length : end;
  }
  let j = i;
  while (j < text.length && !isWs(text[j]) && text[j] !== "," && text[j] !== "}" && text[j] !== "]") j++;
  return j;
}

/** The top-level members (object) or elements (array) of `text`, which must be valid JSON. */
export function topLevelSpans(text: string): JsonSpan[] {
  const spans: JsonSpan[] = [];
  let i = skipWs(text, 0);
  const isObject = text[i] === "{";
  i++;
  for (;;) {
    i = skipWs(text, i);
    if (i >= text.length || text[i] === "}" || text[i] === "]") return spans;
    let key: string | undefined;
    if (isObject) {
      const keyEnd = stringEnd(text, i);
      key = JSON.parse(text.slice(i, keyEnd)) as string;
      i = skipWs(text, skipWs(text, keyEnd) + 1);
    }
    const end = valueEnd(text, i);
    spans.push({ key, start: i, end });
    i = skipWs(text, end);
    if (text[i] === ",") i++;
  }
}
