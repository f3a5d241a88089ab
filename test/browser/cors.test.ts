// Browsers calling kvpark from a page of another origin (--cors-origins), in headless Chromium driven
// by playwright-core: the OpenAI-compatible API, Connect and gRPC-Web succeed for an allowed origin,
// and the browser refuses them against a server without the option and for an origin not listed.
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { startServer, type ServerProcess } from "../helpers/server";

const CHROMIUM = "/usr/bin/chromium";
// This machine's network is closed: no GPU, no QUIC, no background fetches of components or updates.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const TOKEN = "tenant-a-secret-token-0001";

/** The static page; the test runs its calls in it with page.evaluate and shows the results there. */
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>kvpark from another origin</title>
<style>body{font:14px monospace;margin:16px} pre{white-space:pre-wrap}</style></head>
<body><h1>kvpark from another origin</h1><p id="origin"></p><pre id="out">no calls yet</pre>
<script>
document.getElementById("origin").textContent = "page origin: " + location.origin;
window.show = (text) => { document.getElementById("out").textContent = text; };
</script></body></html>`;

/** Serves PAGE on a free loopback port: each port is an origin of its own. */
async function servePage(): Promise<{ origin: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url !== "/") return void res.writeHead(404).end();
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** What one fetch in the page came to: a response, or the exception fetch threw. */
interface Outcome {
  status?: number;
  /** The response's JSON body (for gRPC-Web, the message of its data frame). */
  json?: Record<string, unknown>;
  /** gRPC-Web's trailers, from the body's trailer frame. */
  trailers?: string;
  /** "Name: message" of what fetch threw, e.g. "TypeError: Failed to fetch". */
  error?: string;
}

interface Outcomes {
  openai: Outcome;
  connect: Outcome;
  connectWithoutToken: Outcome;
  grpcWeb: Outcome;
}

/**
 * Runs in the page (serialized by playwright): the calls a web application makes, with fetch.
 * Everything it uses is defined inside it.
 */
async function callFromPage(args: { base: string; token: string; model: string }): Promise<Outcomes> {
  const { base, token, model } = args;
  const attempt = async (run: () => Promise<Outcome>): Promise<Outcome> => {
    try {
      return await run();
    } catch (err) {
      return { error: `${(err as Error).name}: ${(err as Error).message}` };
    }
  };
  const json = async (res: Response): Promise<Outcome> => {
    const text = await res.text();
    let body: Record<string, unknown> | undefined;
    try {
      body = JSON.parse(text);
    } catch {
      body = { unparsed: text.slice(0, 200) };
    }
    return { status: res.status, json: body };
  };
  const connect = (headers: Record<string, string>) =>
    attempt(async () =>
      json(
        await fetch(`${base}/kvpark.v1.ModelService/Info`, {
          method: "POST",
          headers: { "content-type": "application/json", "connect-protocol-version": "1", ...headers },
          body: "{}",
        }),
      ),
    );
  return {
    // The OpenAI-compatible chat completion, as the OpenAI documentation shapes it.
    openai: await attempt(async () =>
      json(
        await fetch(`${base}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
          body: JSON.stringify({
            model,
            messages: [{ role: "user", content: "Hello" }],
            max_tokens: 4,
            temperature: 0,
          }),
        }),
      ),
    ),
    // A unary Connect call in Connect's JSON protocol.
    connect: await connect({ authorization: `Bearer ${token}` }),
    // Its error must reach the page too, so that a web application can tell the user why.
    connectWithoutToken: await connect({}),
    // The same method over gRPC-Web (JSON codec): an enveloped request; a data frame and a trailer
    // frame (flag 0x80) in the response's body.
    grpcWeb: await attempt(async () => {
      const message = new TextEncoder().encode("{}");
      const body = new Uint8Array(5 + message.length);
      new DataView(body.buffer).setUint32(1, message.length);
      body.set(message, 5);
      const res = await fetch(`${base}/kvpark.v1.ModelService/Info`, {
        method: "POST",
        headers: {
          "content-type": "application/grpc-web+json",
          "x-grpc-web": "1",
          "x-user-agent": "kvpark-browser-test",
          authorization: `Bearer ${token}`,
        },
        body,
      });
      const bytes = new Uint8Array(await res.arrayBuffer());
      const outcome: Outcome = { status: res.status };
      for (let at = 0; at + 5 <= bytes.length;) {
        const length = new DataView(bytes.buffer, bytes.byteOffset + at + 1, 4).getUint32(0);
        const text = new TextDecoder().decode(bytes.subarray(at + 5, at + 5 + length));
        if (bytes[at] & 0x80) outcome.trailers = text;
        else outcome.json = JSON.parse(text);
        at += 5 + length;
      }
      return outcome;
    }),
  };
}

/** Opens the page of `origin`, makes the calls against `server` and shows what they came to. */
async function callsFrom(
  page: Page,
  origin: string,
  server: ServerProcess,
  model: string,
): Promise<Outcomes> {
  await page.goto(`${origin}/`);
  const outcomes = await page.evaluate(callFromPage, { base: server.url, token: TOKEN, model });
  const shown = `kvpark at ${server.url}\n\n${JSON.stringify(outcomes, null, 2)}`;
  await page.evaluate((text) => (globalThis as unknown as { show(t: string): void }).show(text), shown);
  return outcomes;
}

/** An HTTP/1.1 request from Node, which (unlike a browser) lets the test set Origin and read everything. */
function request(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

const corsHeaders = (headers: http.IncomingHttpHeaders) =>
  Object.keys(headers).filter((h) => h.startsWith("access-control-"));

const REFUSED = "TypeError: Failed to fetch";
/** What the page sees when the browser refuses every one of its calls. */
const ALL_REFUSED = {
  openai: { error: REFUSED },
  connect: { error: REFUSED },
  connectWithoutToken: { error: REFUSED },
  grpcWeb: { error: REFUSED },
};

describe("browsers (--cors-origins) in headless Chromium", () => {
  let browser: Browser;
  let page: Page;
  let allowedPage: Awaited<ReturnType<typeof servePage>>;
  let otherPage: Awaited<ReturnType<typeof servePage>>;
  /** Lists allowedPage's origin in --cors-origins. */
  let withCors: ServerProcess;
  /** Started without --cors-origins. */
  let withoutCors: ServerProcess;
  let model: string;
  let allowed: Outcomes;
  let screenshot: string;

  beforeAll(async () => {
    if (!fs.existsSync(CHROMIUM))
      throw new Error(
        `Chromium is not installed (${CHROMIUM} is missing): run \`bash scripts/setup.sh --test\`, which installs Debian's chromium package`,
      );
    [allowedPage, otherPage] = await Promise.all([servePage(), servePage()]);
    const auth = ["--auth-tokens", `tenant-a=${TOKEN}`];
    [withCors, withoutCors] = await Promise.all([
      startServer({ args: [...auth, "--cors-origins", allowedPage.origin] }),
      startServer({ args: auth }),
    ]);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: { width: 900, height: 1200 } });
    // The model's name, as the OpenAI API's `model` field takes it (asked from Node: no CORS here).
    const info = await request(
      `${withCors.url}/kvpark.v1.ModelService/Info`,
      "POST",
      { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
      "{}",
    );
    model = (JSON.parse(info.body) as { model: string }).model;
    // The calls a page of the listed origin makes, and a screenshot of the page showing them.
    allowed = await callsFrom(page, allowedPage.origin, withCors, model);
    screenshot = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-browser-")), "cors.png");
    await page.screenshot({ path: screenshot, fullPage: true });
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await Promise.all([withCors?.stop(), withoutCors?.stop(), allowedPage?.close(), otherPage?.close()]);
  });

  it("lets a page of a listed origin call the OpenAI API", () => {
    expect(allowed.openai).toMatchObject({ status: 200, json: { object: "chat.completion", model } });
    const choices = allowed.openai.json!.choices as Array<{ message: { role: string; content: unknown } }>;
    expect(choices[0].message.role).toBe("assistant");
    expect(typeof choices[0].message.content).toBe("string");
  });

  it("lets a page of a listed origin call Connect and gRPC-Web, and read their errors", () => {
    expect(allowed.connect).toMatchObject({ status: 200, json: { model } });
    expect(allowed.connectWithoutToken).toMatchObject({ status: 401, json: { code: "unauthenticated" } });
    expect(allowed.grpcWeb).toMatchObject({ status: 200, json: { model } });
    expect(allowed.grpcWeb.trailers).toMatch(/^grpc-status: ?0\r?$/m);
  });

  it("takes a screenshot of the page that made the calls", () => {
    const png = fs.readFileSync(screenshot);
    expect(png.length).toBeGreaterThan(0);
    expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  });

  it("is refused by the browser against a server without --cors-origins", async () => {
    expect(await callsFrom(page, allowedPage.origin, withoutCors, model)).toEqual(ALL_REFUSED);
  }, 60_000);

  it("is refused by the browser for an origin --cors-origins does not list", async () => {
    expect(await callsFrom(page, otherPage.origin, withCors, model)).toEqual(ALL_REFUSED);
  }, 60_000);

  it("answers a preflight with the headers of gRPC-Web, Connect and the HTTP APIs", async () => {
    for (const p of ["/v1/chat/completions", "/v1/messages", "/kvpark.v1.ModelService/Info"]) {
      const res = await request(`${withCors.url}${p}`, "OPTIONS", {
        origin: allowedPage.origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
      });
      expect(res.status).toBe(204);
      expect(res.headers["access-control-allow-origin"]).toBe(allowedPage.origin);
      expect(res.headers.vary).toMatch(/\borigin\b/i);
      expect(res.headers["access-control-allow-methods"]!.split(",")).toEqual(
        expect.arrayContaining(["GET", "POST"]),
      );
      expect(res.headers["access-control-allow-headers"]!.split(",")).toEqual(
        expect.arrayContaining([
          "authorization",
          "x-api-key",
          "anthropic-version",
          "content-type",
          "connect-protocol-version",
          "connect-timeout-ms",
          "x-grpc-web",
          "x-user-agent",
          "grpc-timeout",
        ]),
      );
      expect(res.headers["access-control-expose-headers"]!.split(",")).toEqual(
        expect.arrayContaining(["grpc-status", "grpc-message", "grpc-status-details-bin"]),
      );
      expect(res.headers["access-control-max-age"]).toBe("7200");
    }
  });

  it("adds no CORS header for an unlisted origin or without the option, and answers OPTIONS as before", async () => {
    const preflight = { "access-control-request-method": "POST" };
    for (const [server, origin] of [
      [withoutCors, allowedPage.origin],
      [withCors, otherPage.origin],
    ] as const) {
      // As without the option: Connect answers OPTIONS on a method's path with 405, and on any other
      // path with 404 (an HTTP API may say 405 for a path it serves with other methods).
      const method = await request(`${server.url}/kvpark.v1.ModelService/Info`, "OPTIONS", {
        origin,
        ...preflight,
      });
      expect(method.status).toBe(405);
      expect(corsHeaders(method.headers)).toEqual([]);
      const api = await request(`${server.url}/v1/chat/completions`, "OPTIONS", { origin, ...preflight });
      expect([404, 405]).toContain(api.status);
      expect(corsHeaders(api.headers)).toEqual([]);
      const call = await request(
        `${server.url}/kvpark.v1.ModelService/Info`,
        "POST",
        { origin, "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
        "{}",
      );
      expect(call.status).toBe(200);
      expect(corsHeaders(call.headers)).toEqual([]);
    }
    // Without an Origin, as from curl or a server, nothing changes either.
    const plain = await request(
      `${withCors.url}/kvpark.v1.ModelService/Info`,
      "POST",
      { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
      "{}",
    );
    expect(plain.status).toBe(200);
    expect(corsHeaders(plain.headers)).toEqual([]);
  });
});
