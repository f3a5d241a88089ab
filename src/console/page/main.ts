// The web console's page: polls Stats and ConsoleService.RecentRequests over Connect once a second and
// streams a chat box's Generate, all to the server that served the page, with the bearer token the
// user gave when the server asks for one. Bundled for the browser by `npm run build` (esbuild).
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ConsoleService, RequestApi, type RecentRequest } from "../../../gen/kvpark/v1/console_pb.js";
import { FinishReason, InferenceService } from "../../../gen/kvpark/v1/inference_pb.js";
import { KVBlocksService, type StatsResponse, type TierStats } from "../../../gen/kvpark/v1/kvblocks_pb.js";
import { ModelService } from "../../../gen/kvpark/v1/model_pb.js";

const REFRESH_MS = 1000;
/** The token lives as long as the browser tab, never on disk. */
const TOKEN_KEY = "kvpark-console-token";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
};

let token = sessionStorage.getItem(TOKEN_KEY) ?? "";

const bearer: Interceptor = (next) => (req) => {
  if (token) req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};
const transport = createConnectTransport({ baseUrl: location.origin, interceptors: [bearer] });
const kvblocks = createClient(KVBlocksService, transport);
const consoleService = createClient(ConsoleService, transport);
const inference = createClient(InferenceService, transport);
const model = createClient(ModelService, transport);

// Formatting.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
function bytes(n: bigint | number): string {
  let v = Number(n);
  let unit = 0;
  while (v >= 1024 && unit < UNITS.length - 1) {
    v /= 1024;
    unit++;
  }
  return `${unit === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${UNITS[unit]}`;
}
const count = (n: bigint | number) => Number(n).toLocaleString("en-US");
const ms = (n: number) => `${n.toFixed(1)} ms`;
const percent = (part: number, whole: number) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : "–");

/** Shows `text` in #id and keeps the raw number in data-value, for whoever reads the page by script. */
function show(id: string, text: string, value?: bigint | number): void {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}

function status(text: string, error = false): void {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

// Stats.

function showTier(name: "ram" | "ssd", t: TierStats | undefined): void {
  if (!t) return;
  show(`${name}-bytes`, bytes(t.bytes), t.bytes);
  show(`${name}-bytes-max`, bytes(t.bytesMax), t.bytesMax);
  $<HTMLMeterElement>(`${name}-meter`).value = t.bytesMax > 0n ? Number(t.bytes) / Number(t.bytesMax) : 0;
  show(`${name}-blocks`, count(t.blocks), t.blocks);
  show(`${name}-pinned`, count(t.pinnedBlocks), t.pinnedBlocks);
  show(`${name}-hits`, count(t.hits), t.hits);
  show(`${name}-misses`, count(t.misses), t.misses);
  show(`${name}-evictions`, count(t.evictions), t.evictions);
  show(`${name}-hit-rate`, percent(Number(t.hits), Number(t.hits + t.misses)));
  show(`pins-${name}`, count(t.pinnedBlocks), t.pinnedBlocks);
}

function showStats(s: StatsResponse): void {
  showTier("ram", s.ram);
  showTier("ssd", s.ssd);
  show("write-queue", `${count(s.writeQueueDepth)} blocks`, s.writeQueueDepth);
  show("write-errors", count(s.writeErrors), s.writeErrors);
  show("corrupt-blocks", count(s.corruptBlocks), s.corruptBlocks);
  const e = s.engine;
  if (!e) return;
  show("engine-rss", bytes(e.rssBytes), e.rssBytes);
  show("engine-memory-max", bytes(e.memoryMaxBytes), e.memoryMaxBytes);
  $<HTMLMeterElement>("engine-meter").value =
    e.memoryMaxBytes > 0n ? Number(e.rssBytes) / Number(e.memoryMaxBytes) : 0;
  show("engine-reserved", bytes(e.memoryReservedBytes), e.memoryReservedBytes);
  show("engine-kept", bytes(e.allocatorKeptBytes), e.allocatorKeptBytes);
  show("engine-purges", count(e.allocatorPurges), e.allocatorPurges);
  show("engine-running", count(e.sequencesRunning), e.sequencesRunning);
  show("engine-waiting", count(e.sequencesWaiting), e.sequencesWaiting);
  show("engine-batch", count(e.decodeBatch), e.decodeBatch);
  show("engine-steps", count(e.steps), e.steps);
}

// Recent requests.

const API_NAMES: Record<RequestApi, string> = {
  [RequestApi.UNSPECIFIED]: "?",
  [RequestApi.GRPC]: "gRPC",
  [RequestApi.OPENAI]: "OpenAI",
  [RequestApi.ANTHROPIC]: "Anthropic",
};

const FINISH_NAMES: Record<FinishReason, string> = {
  [FinishReason.UNSPECIFIED]: "?",
  [FinishReason.EOS]: "eos",
  [FinishReason.STOP_STRING]: "stop",
  [FinishReason.MAX_TOKENS]: "max tokens",
  [FinishReason.CONTEXT_LIMIT]: "context limit",
  [FinishReason.TOOL_CALLS]: "tool calls",
};

function cell(row: HTMLTableRowElement, className: string, text: string, value?: number): void {
  const td = row.insertCell();
  td.className = className;
  td.textContent = text;
  if (value !== undefined) td.dataset.value = String(value);
}

function showRecent(requests: RecentRequest[], capacity: number, allTenants: boolean): void {
  const table = $<HTMLTableElement>("recent");
  table.classList.toggle("no-tenants", !allTenants);
  const body = table.tBodies[0];
  body.replaceChildren();
  let prompt = 0;
  let reused = 0;
  for (const r of requests) {
    const row = body.insertRow();
    const usage = r.usage;
    const cache = r.cache;
    prompt += usage?.promptTokens ?? 0;
    reused += (cache?.ramTokens ?? 0) + (cache?.ssdTokens ?? 0) + (cache?.sharedTokens ?? 0);
    cell(row, "time", r.finishedAt ? new Date(timestampMs(r.finishedAt)).toLocaleTimeString() : "");
    cell(row, "tenant", r.tenant || "(default)");
    cell(row, "api", API_NAMES[r.api] ?? "?");
    cell(row, "prompt", count(usage?.promptTokens ?? 0), usage?.promptTokens ?? 0);
    cell(row, "ram", count(cache?.ramTokens ?? 0), cache?.ramTokens ?? 0);
    cell(row, "ssd", count(cache?.ssdTokens ?? 0), cache?.ssdTokens ?? 0);
    cell(row, "computed", count(cache?.recomputedTokens ?? 0), cache?.recomputedTokens ?? 0);
    cell(row, "output", count(usage?.completionTokens ?? 0), usage?.completionTokens ?? 0);
    cell(row, "ttft", ms(r.timings?.ttftMs ?? 0), r.timings?.ttftMs ?? 0);
    cell(row, "total", ms(r.timings?.totalMs ?? 0), r.timings?.totalMs ?? 0);
    cell(row, "finish", FINISH_NAMES[r.finishReason] ?? "?");
  }
  show("recent-count", `(${requests.length}, newest first; the server keeps ${capacity})`);
  show("reuse-rate", percent(reused, prompt));
  show(
    "scope",
    allTenants
      ? "Every tenant's numbers (operator)."
      : "Your tenant's numbers; the engine's are server-wide.",
  );
}

// Polling and the token.

function needToken(message: string): void {
  $("auth").hidden = false;
  $("auth-error").textContent = message;
  status("a token is needed", true);
}

let modelShown = false;

async function refresh(): Promise<void> {
  try {
    const [stats, recent] = await Promise.all([kvblocks.stats({}), consoleService.recentRequests({})]);
    showStats(stats);
    showRecent(recent.requests, recent.capacity, recent.allTenants);
    if (!modelShown) {
      const info = await model.info({});
      show("model", `${info.model} · ${info.modelType} · ${info.blockTokens} tokens per block`);
      modelShown = true;
    }
    $("auth").hidden = true;
    $("forget-token").hidden = !token;
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    const e = ConnectError.from(err);
    if (e.code === Code.Unauthenticated)
      needToken(token ? `The server refused this token: ${e.rawMessage}` : "");
    else status(`${Code[e.code]}: ${e.rawMessage}`, true);
  }
}

async function poll(): Promise<void> {
  await refresh();
  setTimeout(() => void poll(), REFRESH_MS);
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $<HTMLInputElement>("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  void refresh();
});

$("forget-token").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  void refresh();
});

// The chat box: one Generate, its deltas appended as they arrive.

let chatAbort: AbortController | undefined;

async function chat(): Promise<void> {
  const output = $("chat-output");
  const chatStatus = $("chat-status");
  const setState = (state: string, text: string) => {
    chatStatus.dataset.state = state;
    chatStatus.textContent = text;
  };
  const maxTokens = Number($<HTMLInputElement>("chat-max-tokens").value) || undefined;
  const temperatureText = $<HTMLInputElement>("chat-temperature").value.trim();
  output.textContent = "";
  let deltas = 0;
  output.dataset.deltas = "0";
  chatAbort = new AbortController();
  $<HTMLButtonElement>("chat-send").disabled = true;
  $<HTMLButtonElement>("chat-stop").disabled = false;
  setState("waiting", "waiting for the first token…");
  try {
    const stream = inference.generate(
      {
        prompt: { kind: { case: "text", value: $<HTMLTextAreaElement>("chat-prompt").value } },
        sampling: {
          maxTokens,
          temperature: temperatureText === "" ? undefined : Number(temperatureText),
        },
      },
      { signal: chatAbort.signal },
    );
    for await (const res of stream) {
      const ev = res.event;
      if (ev.case === "started") {
        const c = ev.value.cache;
        setState(
          "started",
          `${ev.value.promptTokens} prompt tokens: ${c?.ramTokens ?? 0} from RAM, ${c?.ssdTokens ?? 0} from SSD, ` +
            (c?.sharedTokens ? `${c.sharedTokens} from the shared tier, ` : "") +
            `${c?.recomputedTokens ?? 0} computed`,
        );
      } else if (ev.case === "delta" && ev.value.text !== "") {
        // Each piece as its own text node: nothing already shown is rewritten.
        output.append(ev.value.text);
        output.dataset.deltas = String(++deltas);
        output.scrollTop = output.scrollHeight;
      } else if (ev.case === "finished") {
        const t = ev.value.timings;
        setState(
          "finished",
          `${ev.value.usage?.completionTokens ?? 0} tokens, TTFT ${ms(t?.ttftMs ?? 0)}, ${(t?.decodeTokensPerSecond ?? 0).toFixed(1)} tokens/s, ${FINISH_NAMES[ev.value.finishReason]}`,
        );
      }
    }
  } catch (err) {
    const e = ConnectError.from(err);
    if (e.code === Code.Unauthenticated) needToken("");
    setState(e.code === Code.Canceled ? "stopped" : "failed", `${Code[e.code]}: ${e.rawMessage}`);
  } finally {
    $<HTMLButtonElement>("chat-send").disabled = false;
    $<HTMLButtonElement>("chat-stop").disabled = true;
    void refresh();
  }
}

$("chat").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void chat();
});
$("chat-stop").addEventListener("click", () => chatAbort?.abort());

void poll();
