// The web console (--console) in headless Chromium driven by playwright-core: after requests over
// gRPC, the OpenAI API and the Anthropic API, the page shows the cache tiers, hit rates, the engine's
// memory, pins and the recent requests with the figures the clients were given; an operator sees
// every tenant's requests, a tenant its own; the chat box streams a Generate over Connect. The page
// loads nothing from anywhere but the server, and the test leaves a screenshot of it.
import * as fs from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as os from "node:os";
import * as path from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { PinKind } from "../../gen/kvpark/v1/common_pb";
import type { GenerateRequestSchema, GenerateResponse } from "../../gen/kvpark/v1/inference_pb";
import type { StatsResponse } from "../../gen/kvpark/v1/kvblocks_pb";
import { chromium, type Browser, type Page } from "playwright-core";
import { kvparkClients } from "../helpers/clients";
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
const TOKEN_A = "tenant-a-console-token-0001";
const TOKEN_B = "tenant-b-console-token-0002";
const ADMIN = "operator-console-token-0003";
/** Long enough for a few 64-token blocks, so that its repetition is served from RAM. */
const LONG_PROMPT = Array.from(
  { length: 12 },
  (_, i) => `Paragraph ${i}: the cache keeps the attention state of prompts it has seen before.`,
).join(" ");
const CHAT_PROMPT = "Hello from the console";

// The little of the DOM that the functions run in the page use: the test's TypeScript has no DOM
// library (playwright serializes these functions and runs them in Chromium).
interface PageElement {
  textContent: string | null;
  hidden: boolean;
  className: string;
  dataset: Record<string, string | undefined>;
  classList: { contains(name: string): boolean };
  querySelectorAll(selector: string): ArrayLike<PageElement>;
}
declare const document: {
  getElementById(id: string): PageElement | null;
  querySelectorAll(selector: string): ArrayLike<PageElement>;
};
declare const getComputedStyle: (el: PageElement) => { display: string };
declare class MutationObserver {
  constructor(callback: (records: { addedNodes: ArrayLike<PageElement> }[]) => void);
  observe(target: PageElement, options: { childList: boolean }): void;
}

/** What one Generate over gRPC came to. */
interface Generated {
  events: GenerateResponse["event"][];
  text: string;
}

async function generate(
  server: ServerProcess,
  token: string,
  req: MessageInitShape<typeof GenerateRequestSchema>,
): Promise<Generated> {
  const events: GenerateResponse["event"][] = [];
  for await (const res of kvparkClients(server, token).inference.generate(req)) events.push(res.event);
  const text = events.map((e) => (e.case === "delta" ? e.value.text : "")).join("");
  return { events, text };
}

function finished(g: Generated) {
  const e = g.events.find((ev) => ev.case === "finished");
  if (e?.case !== "finished") throw new Error("no finished event");
  return e.value;
}

function started(g: Generated) {
  const e = g.events.find((ev) => ev.case === "started");
  if (e?.case !== "started") throw new Error("no started event");
  return e.value;
}

/** An HTTP/1.1 request from Node. */
function request(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () =>
        resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }),
      );
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** A GET over HTTP/2 with prior knowledge, as gRPC clients connect. */
function http2Get(
  base: string,
  urlPath: string,
): Promise<{ headers: http2.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(base);
    session.on("error", reject);
    const stream = session.request({ ":path": urlPath });
    const chunks: Buffer[] = [];
    let headers: http2.IncomingHttpHeaders = {};
    stream.on("response", (h) => (headers = h));
    stream.on("data", (d: Buffer) => chunks.push(d));
    stream.on("end", () => {
      session.close();
      resolve({ headers, body: Buffer.concat(chunks) });
    });
    stream.on("error", reject);
  });
}

/** The cache's numbers as a caller with `token` sees them, once two readings a second apart agree. */
async function settledStats(server: ServerProcess, token: string): Promise<StatsResponse> {
  const kv = kvparkClients(server, token).kv;
  const tiers = (s: StatsResponse) =>
    JSON.stringify([s.ram, s.ssd], (_k, v) => (typeof v === "bigint" ? `${v}` : v));
  let last = await kv.stats({});
  for (let i = 0; i < 30; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    const now = await kv.stats({});
    if (tiers(now) === tiers(last)) return now;
    last = now;
  }
  throw new Error("the cache's numbers did not settle");
}

/** What the page shows: each figure's data-value (the raw number) and text, read in the page. */
async function figure(page: Page, id: string): Promise<{ value: string | undefined; text: string }> {
  return page.$eval(`#${id}`, (el: PageElement) => ({
    value: el.dataset.value,
    text: el.textContent ?? "",
  }));
}

/** The recent requests table's rows, each cell by its class: [value or text]. */
async function recentRows(page: Page): Promise<Record<string, string>[]> {
  return page.$$eval("#recent tbody tr", (rows: PageElement[]) =>
    rows.map((row) =>
      Object.fromEntries(
        Array.from(row.querySelectorAll("td")).map((td: PageElement) => [
          td.className,
          td.dataset.value ?? td.textContent ?? "",
        ]),
      ),
    ),
  );
}

/** Opens the console and gives it `token` when the page asks for one. */
async function openConsole(
  browser: Browser,
  server: ServerProcess,
  token: string | undefined,
  seen: string[],
) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  page.on("request", (r) => seen.push(r.url()));
  await page.goto(`${server.url}/console/`);
  if (token !== undefined) {
    await page.waitForSelector("#auth:not([hidden])");
    await page.fill("#token", token);
    await page.click("#auth button[type=submit]");
  }
  return page;
}

const percent = (part: bigint, whole: bigint) =>
  whole > 0n ? `${((100 * Number(part)) / Number(whole)).toFixed(1)}%` : "–";

describe("the web console (--console) in headless Chromium", () => {
  let browser: Browser;
  /** --console with tenants a and b and an operator. */
  let server: ServerProcess;
  /** Without --console or tokens. */
  let plain: ServerProcess;
  /** Every URL the pages asked for. */
  const seen: string[] = [];
  let pinned: Generated;
  let repeated: Generated;
  let openai: { usage: { prompt_tokens: number; completion_tokens: number } };
  let anthropic: {
    usage: {
      input_tokens: number;
      cache_creation_input_tokens: number;
      cache_read_input_tokens: number;
      output_tokens: number;
    };
  };
  const anthropicPrompt = () =>
    anthropic.usage.input_tokens +
    anthropic.usage.cache_creation_input_tokens +
    anthropic.usage.cache_read_input_tokens;
  let operator: Page;
  let stats: StatsResponse;

  beforeAll(async () => {
    if (!fs.existsSync(CHROMIUM))
      throw new Error(
        `Chromium is not installed (${CHROMIUM} is missing): run \`bash scripts/setup.sh --test\`, which installs Debian's chromium package`,
      );
    [server, plain] = await Promise.all([
      startServer({
        args: [
          "--console",
          "--auth-tokens",
          `tenant-a=${TOKEN_A},tenant-b=${TOKEN_B}`,
          "--admin-tokens",
          `ops=${ADMIN}`,
        ],
      }),
      startServer(),
    ]);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });

    // The requests the console is to show, one after the other (newest first on the page): a pinned
    // prompt and its repetition (served from RAM) over gRPC as tenant a, a chat completion over the
    // OpenAI API as tenant b, a message over the Anthropic API as tenant a.
    const req = {
      prompt: { kind: { case: "text" as const, value: LONG_PROMPT } },
      sampling: { maxTokens: 4, temperature: 0 },
    };
    pinned = await generate(server, TOKEN_A, { ...req, cache: { pin: PinKind.SOFT } });
    repeated = await generate(server, TOKEN_A, req);
    const json = { "content-type": "application/json" };
    const oa = await request(
      `${server.url}/v1/chat/completions`,
      "POST",
      { ...json, authorization: `Bearer ${TOKEN_B}` },
      JSON.stringify({ messages: [{ role: "user", content: "Hello" }], max_tokens: 3, temperature: 0 }),
    );
    expect(oa.status).toBe(200);
    openai = JSON.parse(oa.body.toString());
    const an = await request(
      `${server.url}/v1/messages`,
      "POST",
      { ...json, "x-api-key": TOKEN_A, "anthropic-version": "2023-06-01" },
      JSON.stringify({
        model: started(pinned).model,
        messages: [{ role: "user", content: "Hi there" }],
        max_tokens: 2,
        temperature: 0,
      }),
    );
    expect(an.status).toBe(200);
    anthropic = JSON.parse(an.body.toString());
    stats = await settledStats(server, ADMIN);

    operator = await openConsole(browser, server, ADMIN, seen);
    // Once a refresh after all of them has reached the page.
    await operator.waitForFunction(() => document.querySelectorAll("#recent tbody tr").length === 4);
    await operator.waitForFunction(
      (bytes) => document.getElementById("ram-bytes")?.dataset.value === bytes,
      String(stats.ram!.bytes),
    );
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await Promise.all([server?.stop(), plain?.stop()]);
  });

  it("shows the tiers' occupancy, blocks, pins and hit rates as Stats gives them", async () => {
    for (const tier of ["ram", "ssd"] as const) {
      const t = stats[tier]!;
      expect(await figure(operator, `${tier}-bytes`)).toMatchObject({ value: String(t.bytes) });
      expect(await figure(operator, `${tier}-bytes-max`)).toMatchObject({ value: String(t.bytesMax) });
      expect(await figure(operator, `${tier}-blocks`)).toMatchObject({ value: String(t.blocks) });
      expect(await figure(operator, `${tier}-pinned`)).toMatchObject({ value: String(t.pinnedBlocks) });
      expect(await figure(operator, `pins-${tier}`)).toMatchObject({ value: String(t.pinnedBlocks) });
      expect(await figure(operator, `${tier}-hits`)).toMatchObject({ value: String(t.hits) });
      expect(await figure(operator, `${tier}-hit-rate`)).toEqual({
        value: undefined,
        text: percent(t.hits, t.hits + t.misses),
      });
    }
    // Live figures: the prompts are in RAM, the pinned one's blocks pinned, the repetition a hit.
    expect(stats.ram!.bytes).toBeGreaterThan(0n);
    expect(stats.ram!.blocks).toBeGreaterThan(0n);
    expect(stats.ram!.pinnedBlocks).toBeGreaterThan(0n);
    expect(stats.ram!.hits).toBeGreaterThan(0n);
    expect((await figure(operator, "ram-bytes")).text).toMatch(/^\d+(\.\d+)? (B|KiB|MiB|GiB)$/);
    expect((await figure(operator, "ram-hit-rate")).text).toMatch(/^\d+\.\d%$/);
  });

  it("shows the engine's memory and scheduler", async () => {
    expect(Number((await figure(operator, "engine-rss")).value)).toBeGreaterThan(0);
    expect((await figure(operator, "engine-memory-max")).value).toBe(String(stats.engine!.memoryMaxBytes));
    expect(Number((await figure(operator, "engine-steps")).value)).toBeGreaterThan(0);
    // The engine runs on jemalloc: what it keeps is shown as Stats gives it.
    const kept = await figure(operator, "engine-kept");
    expect(kept.text).toMatch(/^\d+(\.\d+)? (B|KiB|MiB|GiB)$/);
    expect((await figure(operator, "engine-purges")).value).toMatch(/^\d+$/);
    expect((await figure(operator, "engine-running")).value).toMatch(/^\d+$/);
  });

  it("lists an operator every tenant's recent requests with the figures their clients got", async () => {
    const rows = await recentRows(operator);
    expect(rows.map((r) => [r.api, r.tenant])).toEqual([
      ["Anthropic", "tenant-a"],
      ["OpenAI", "tenant-b"],
      ["gRPC", "tenant-a"],
      ["gRPC", "tenant-a"],
    ]);
    // The repetition, as its client saw it: prompt tokens from RAM, TTFT and duration to the bit.
    const cache = started(repeated).cache!;
    const { usage, timings } = finished(repeated);
    expect(cache.ramTokens).toBeGreaterThan(0);
    expect(rows[2]).toMatchObject({
      prompt: String(usage!.promptTokens),
      ram: String(cache.ramTokens),
      ssd: String(cache.ssdTokens),
      computed: String(cache.recomputedTokens),
      output: String(usage!.completionTokens),
      ttft: String(timings!.ttftMs),
      total: String(timings!.totalMs),
      finish: expect.stringMatching(/^(eos|max tokens)$/),
    });
    expect(rows[3]).toMatchObject({
      ram: "0",
      ttft: String(finished(pinned).timings!.ttftMs),
      prompt: String(finished(pinned).usage!.promptTokens),
    });
    expect(rows[1]).toMatchObject({
      prompt: String(openai.usage.prompt_tokens),
      output: String(openai.usage.completion_tokens),
    });
    expect(rows[0]).toMatchObject({
      // Anthropic counts the prompt in three parts: uncached, written to the cache, read from it.
      prompt: String(anthropicPrompt()),
      ram: String(anthropic.usage.cache_read_input_tokens),
      output: String(anthropic.usage.output_tokens),
    });
    const ttftText = await operator.$$eval(
      "#recent tbody tr:nth-child(3) td.ttft",
      (tds) => tds[0].textContent,
    );
    expect(ttftText).toBe(`${timings!.ttftMs.toFixed(1)} ms`);
    expect(await operator.$eval("#recent", (t: PageElement) => t.classList.contains("no-tenants"))).toBe(
      false,
    );
    // Prompt tokens reused over the list: the repetition's RAM tokens of all prompt tokens.
    const prompts = [
      usage!.promptTokens,
      finished(pinned).usage!.promptTokens,
      openai.usage.prompt_tokens,
      anthropicPrompt(),
    ];
    const reused = rows.reduce((n, r) => n + Number(r.ram) + Number(r.ssd), 0);
    expect(reused).toBe(cache.ramTokens + cache.ssdTokens);
    expect((await figure(operator, "reuse-rate")).text).toBe(
      percent(BigInt(reused), BigInt(prompts.reduce((a, b) => a + b, 0))),
    );
  });

  it("streams the chat box's Generate over Connect as its deltas arrive", async () => {
    // Every piece of text added to the output, in order, recorded in the page as the page adds it.
    await operator.evaluate(() => {
      const out = document.getElementById("chat-output")!;
      const pieces: string[] = [];
      (globalThis as unknown as { outputPieces: string[] }).outputPieces = pieces;
      new MutationObserver((records) => {
        for (const r of records) for (const n of Array.from(r.addedNodes)) pieces.push(n.textContent ?? "");
      }).observe(out, { childList: true });
    });
    await operator.fill("#chat-prompt", CHAT_PROMPT);
    await operator.fill("#chat-max-tokens", "12");
    await operator.fill("#chat-temperature", "0");
    await operator.click("#chat-send");
    await operator.waitForSelector('#chat-status[data-state="finished"]', { timeout: 60_000 });
    const shown = await operator.$eval("#chat-output", (el: PageElement) => ({
      text: el.textContent ?? "",
      deltas: Number(el.dataset.deltas),
    }));
    const pieces = await operator.evaluate(
      () => (globalThis as unknown as { outputPieces: string[] }).outputPieces,
    );
    // The same request from Node gives the same text (greedy decoding, batch-invariant, cache-faithful).
    const expected = await generate(server, ADMIN, {
      prompt: { kind: { case: "text", value: CHAT_PROMPT } },
      sampling: { maxTokens: 12, temperature: 0 },
    });
    expect(expected.text.length).toBeGreaterThan(0);
    expect(shown.text).toBe(expected.text);
    // Shown as it streamed: one piece per delta with text, in order, nothing rewritten.
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces.every((p) => p !== "")).toBe(true);
    expect(pieces.join("")).toBe(expected.text);
    expect(shown.deltas).toBe(pieces.length);
    expect(await operator.$eval("#chat-status", (el) => el.textContent)).toMatch(/TTFT \d+\.\d ms/);
    // The chat box's request (and the one from Node) join the list, as gRPC calls of the operator's tenant.
    await operator.waitForFunction(() => document.querySelectorAll("#recent tbody tr").length === 6);
    expect((await recentRows(operator)).slice(0, 2).map((r) => [r.api, r.tenant])).toEqual([
      ["gRPC", "ops"],
      ["gRPC", "ops"],
    ]);
    const screenshot = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-browser-")), "console.png");
    await operator.screenshot({ path: screenshot, fullPage: true });
    process.stdout.write(`console screenshot: ${screenshot}\n`);
    expect(fs.readFileSync(screenshot).subarray(0, 8)).toEqual(
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    );
  }, 120_000);

  it("shows a tenant only its own requests, without the tenant column", async () => {
    const page = await openConsole(browser, server, TOKEN_B, seen);
    await page.waitForFunction(() => document.getElementById("status")?.textContent?.startsWith("updated"));
    const rows = await recentRows(page);
    expect(rows.map((r) => r.api)).toEqual(["OpenAI"]);
    expect(await page.$eval("#recent", (t: PageElement) => t.classList.contains("no-tenants"))).toBe(true);
    expect(await page.$eval("#recent th.tenant", (th: PageElement) => getComputedStyle(th).display)).toBe(
      "none",
    );
    await page.close();
  });

  it("asks for a token, and says when the server refuses it", async () => {
    const page = await openConsole(browser, server, "not-a-token-of-this-server", seen);
    await page.waitForFunction(() => document.getElementById("auth-error")?.textContent !== "");
    expect(await page.$eval("#auth-error", (el) => el.textContent)).toBe(
      "The server refused this token: invalid bearer token",
    );
    expect(await page.$eval("#auth", (el: PageElement) => el.hidden)).toBe(false);
    expect(await recentRows(page)).toEqual([]);
    await page.close();
  });

  it("loads nothing from anywhere but the server", () => {
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.filter((url) => !url.startsWith(`${server.url}/`))).toEqual([]);
  });

  it("serves the page's files with their content types, over HTTP/1.1 and HTTP/2", async () => {
    const expected: Record<string, RegExp> = {
      "/console/": /^<!doctype html>/,
      "/console/console.js": /sourceMappingURL=console\.js\.map/,
      "/console/console.css": /^:root/,
    };
    const types: Record<string, string> = {
      "/console/": "text/html; charset=utf-8",
      "/console/console.js": "text/javascript; charset=utf-8",
      "/console/console.css": "text/css; charset=utf-8",
    };
    for (const [p, body] of Object.entries(expected)) {
      const res = await request(`${server.url}${p}`, "GET", {});
      expect(res.status).toBe(200);
      expect(res.headers["content-type"]).toBe(types[p]);
      expect(res.headers["x-content-type-options"]).toBe("nosniff");
      expect(res.headers["content-security-policy"]).toMatch(/default-src 'none'; script-src 'self'/);
      expect(res.body.toString()).toMatch(body);
      const h2 = await http2Get(server.url, p);
      expect(h2.headers[":status"]).toBe(200);
      expect(h2.headers["content-type"]).toBe(types[p]);
      expect(h2.body.equals(res.body)).toBe(true);
      const again = await request(`${server.url}${p}`, "GET", { "if-none-match": String(res.headers.etag) });
      expect(again.status).toBe(304);
    }
    const redirect = await request(`${server.url}/console`, "GET", {});
    expect([redirect.status, redirect.headers.location]).toEqual([308, "/console/"]);
    expect((await request(`${server.url}/console/../package.json`, "GET", {})).status).toBe(404);
    expect((await request(`${server.url}/console/nothing.js`, "GET", {})).status).toBe(404);
    const post = await request(`${server.url}/console/`, "POST", {});
    expect([post.status, post.headers.allow]).toEqual([405, "GET, HEAD"]);
  });

  it("is not served without --console, and RecentRequests says why", async () => {
    expect((await request(`${plain.url}/console/`, "GET", {})).status).toBe(404);
    const res = await request(
      `${plain.url}/kvpark.v1.ConsoleService/RecentRequests`,
      "POST",
      { "content-type": "application/json" },
      "{}",
    );
    expect([res.status, JSON.parse(res.body.toString())]).toEqual([
      400,
      {
        code: "failed_precondition",
        message: "the web console is off: start kvpark with --console to keep recent requests",
      },
    ]);
  });
});
