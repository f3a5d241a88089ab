// CORS for browsers (--cors-origins): pages of the configured origins may call the HTTP APIs (every
// path under /v1/), Connect and gRPC-Web. Connect's lists of methods and headers come from
// @connectrpc/connect, the preflight and the headers from the `cors` package, as connect-es's
// documentation shows. A request from any other origin, or without an Origin, gets no CORS header
// and goes on exactly as it would without the option (an OPTIONS request there: Connect's 405 or 404).
import { cors as connectCors } from "@connectrpc/connect";
import cors from "cors";
import { parseOrigins } from "../config.js";
import type { HttpRequest, HttpResponse } from "../http/api.js";

/** Request headers the HTTP APIs read, beside Connect's and gRPC-Web's. */
const HTTP_API_HEADERS = ["authorization", "x-api-key", "anthropic-version", "content-type"];

/**
 * Request headers the official OpenAI and Anthropic SDKs send from a browser (dangerouslyAllowBrowser);
 * a preflight that did not allow them would refuse every call those SDKs make.
 */
const SDK_HEADERS = [
  "anthropic-beta",
  "anthropic-dangerous-direct-browser-access",
  "openai-organization",
  "openai-project",
  "x-stainless-arch",
  "x-stainless-helper-method",
  "x-stainless-lang",
  "x-stainless-os",
  "x-stainless-package-version",
  "x-stainless-retry-count",
  "x-stainless-runtime",
  "x-stainless-runtime-version",
  "x-stainless-timeout",
];

/** How long a browser may keep a preflight's answer, in seconds (Chromium caps it at 7200). */
export const CORS_MAX_AGE_SECONDS = 7200;

const lower = (names: readonly string[]) => names.map((n) => n.toLowerCase());

/** The headers of a preflight's answer (Access-Control-Allow-Headers). */
export const CORS_ALLOWED_HEADERS = [
  ...new Set([...lower(connectCors.allowedHeaders), ...HTTP_API_HEADERS, ...SDK_HEADERS]),
];
/** Response headers a page may read (Access-Control-Expose-Headers): gRPC-Web's status and Connect's. */
export const CORS_EXPOSED_HEADERS = [...new Set(lower(connectCors.exposedHeaders))];

/** Runs before the routes: answers a preflight itself, or adds CORS headers and calls `next`. */
export type CorsStep = (req: HttpRequest, res: HttpResponse, next: () => void) => void;

/** The CORS step for --cors-origins, or undefined when it is empty (no CORS at all). */
export function corsStep(corsOrigins: string): CorsStep | undefined {
  const { origins, problems } = parseOrigins(corsOrigins);
  if (problems.length) throw new Error(problems.join("\n"));
  if (!origins.length) return undefined;
  const any = origins.includes("*");
  const allowed = new Set(origins);
  const middleware = cors<HttpRequest>({
    // "*" when any origin is allowed; otherwise the request's own origin (with Vary: Origin), and
    // for any other origin nothing: the middleware then passes the request on untouched.
    origin: (origin, callback) =>
      callback(null, origin === undefined ? false : any ? "*" : allowed.has(origin) ? origin : false),
    methods: [...connectCors.allowedMethods],
    allowedHeaders: CORS_ALLOWED_HEADERS,
    exposedHeaders: CORS_EXPOSED_HEADERS,
    maxAge: CORS_MAX_AGE_SECONDS,
  });
  // The package's `next` takes an error, which it never passes here: the origin callback gives none.
  return (req, res, next) => middleware(req, res, () => next());
}
