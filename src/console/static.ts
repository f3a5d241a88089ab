// The web console's page (--console): the static files `npm run build` bundles into
// dist/src/console/public, served from memory under CONSOLE_PATH. The page reads everything else
// over Connect with the caller's token, so the files themselves need none.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import type * as http from "node:http";
import * as path from "node:path";
import type { HttpRequest, HttpResponse } from "../http/api.js";

/** Where the console is served. */
export const CONSOLE_PATH = "/console/";

/** Where the build puts the page (see the build script in package.json). */
const PUBLIC_DIR = path.join(__dirname, "public");

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json; charset=utf-8",
};

// Everything the page loads is its own: no inline script or style, no other origin, no frames.
const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

interface StaticFile {
  body: Buffer;
  type: string;
  etag: string;
}

/** The console's files, read once at start. */
export interface ConsoleFiles {
  /** Answers a request for the console's path and returns true; false for any other path. */
  serve(req: HttpRequest, res: HttpResponse): boolean;
}

/** Reads the built page from `dir`; fails when it has not been built. */
export function consoleFiles(dir = PUBLIC_DIR): ConsoleFiles {
  if (!fs.existsSync(path.join(dir, "index.html")) || !fs.existsSync(path.join(dir, "console.js")))
    throw new Error(
      `--console: the console's page is not built (${dir} is incomplete): run \`npm run build\``,
    );
  const files = new Map<string, StaticFile>();
  for (const name of fs.readdirSync(dir)) {
    const type = CONTENT_TYPES[path.extname(name)];
    if (!type) continue;
    const body = fs.readFileSync(path.join(dir, name));
    const etag = `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`;
    files.set(name, { body, type, etag });
  }
  return {
    serve(req, res) {
      const urlPath = (req.url ?? "").split("?")[0];
      const reply = res as http.ServerResponse;
      if (urlPath === CONSOLE_PATH.slice(0, -1)) {
        reply.writeHead(308, { location: CONSOLE_PATH }).end();
        return true;
      }
      if (!urlPath.startsWith(CONSOLE_PATH)) return false;
      // Only the names the build wrote: nothing under the path reaches the file system.
      const file = files.get(urlPath.slice(CONSOLE_PATH.length) || "index.html");
      if (!file) {
        reply.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found\n");
        return true;
      }
      if (req.method !== "GET" && req.method !== "HEAD") {
        reply.writeHead(405, { allow: "GET, HEAD" }).end();
        return true;
      }
      const headers = {
        "content-type": file.type,
        "cache-control": "no-cache",
        etag: file.etag,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "content-security-policy": CONTENT_SECURITY_POLICY,
      };
      if (req.headers["if-none-match"] === file.etag) {
        reply.writeHead(304, headers).end();
        return true;
      }
      reply.writeHead(200, { ...headers, "content-length": String(file.body.length) });
      reply.end(req.method === "HEAD" ? undefined : file.body);
      return true;
    },
  };
}
