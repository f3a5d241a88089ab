import * as http2 from "node:http2";
import Anthropic from "@anthropic-ai/sdk";
import Ajv from "ajv";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { PromptSchema } from "../../gen/kvpark/v1/common_pb";
import {
  KVBlocksService,
  type LookupResponse,
  type StatsResponse,
  type UnpinResponse,
} from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, testModel, type ServerProcess } from "../helpers/server";
import {
  ANTHROPIC_AGENT_TOOLS as TOOLS,
  TOKEN,
  anthropicClient,
  failure,
  grpcCall,
} from "./anthropic-client";

const MODEL = "tiny";
/** A second tenant, whose pins no other test touches. */
const PIN_TOKEN = "anthropic-pins-token-0123456789";
const BODY_LIMIT = 64 * 1024;

type Params = Anthropic.MessageCreateParamsNonStreaming;
type Usage = Anthropic.Usage;

/** All the prompt tokens a usage reports: read from the cache, written to it, and the rest. */
const promptTotal = (u: Usage) =>
  u.input_tokens + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);

/** A POST of raw bytes, for what the client library cannot send. */
async function post(server: ServerProcess, path: string, body: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": TOKEN, ...headers },
    body,
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
}

/** A chat prompt for KVBlocks calls (the rendering the Anthropic request gets, as far as it goes). */
function chat(
  messages: { role: string; content: string }[],
  addGenerationPrompt: boolean,
): MessageInitShape<typeof PromptSchema> {
  return { kind: { case: "chat", value: { messages, addGenerationPrompt } } };
}

describe("the Anthropic Messages API, through the official @anthropic-ai/sdk client", () => {
  let server: ServerProcess;
  let client: Anthropic;

  beforeAll(async () => {
    server = await startServer({
      model: testModel(),
      args: [
        "--auth-tokens",
        `anthropic=${TOKEN},pins=${PIN_TOKEN}`,
        "--message-bytes-max",
        String(BODY_LIMIT),
        "--test-engine-abort",
        "--engine-restart-delay-ms",
        "3000",
      ],
    });
    client = anthropicClient(server);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("answers a message whole, and the same one streamed with Anthropic's events", async () => {
    const params: Params = {
      model: MODEL,
      max_tokens: 24,
      system: "Answer briefly.",
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "Tell me" },
            { type: "text", text: "a story." },
          ],
        },
      ],
      metadata: { user_id: "someone" },
    };
    const whole = await client.messages.create(params);
    expect(whole.id).toMatch(/^msg_/);
    expect([whole.type, whole.role, whole.model]).toEqual(["message", "assistant", MODEL]);
    expect(whole.content.map((b) => b.type)).toEqual(["text"]);
    expect(["end_turn", "max_tokens"]).toContain(whole.stop_reason);
    expect(whole.usage.output_tokens).toBeGreaterThan(0);
    expect(whole.usage.output_tokens).toBeLessThanOrEqual(24);
    const text = (whole.content[0] as Anthropic.TextBlock).text;

    // The raw events of create({stream: true}), in Anthropic's order.
    const events: Anthropic.RawMessageStreamEvent[] = [];
    for await (const ev of await client.messages.create({ ...params, stream: true })) events.push(ev);
    const types = events.map((e) => e.type);
    expect(types[0]).toBe("message_start");
    expect(types.slice(1, 2)).toEqual(["content_block_start"]);
    expect(types.slice(-3)).toEqual(["content_block_stop", "message_delta", "message_stop"]);
    expect(new Set(types.slice(2, -3))).toEqual(new Set(["content_block_delta"]));
    const deltas = events.flatMap((e) =>
      e.type === "content_block_delta" && e.delta.type === "text_delta" ? [e.delta.text] : [],
    );
    expect(deltas.join("")).toBe(text);
    const start = events[0] as Anthropic.RawMessageStartEvent;
    expect(start.message.id).toMatch(/^msg_/);
    expect(promptTotal(start.message.usage)).toBe(promptTotal(whole.usage));
    const end = events.at(-2) as Anthropic.RawMessageDeltaEvent;
    expect(end.delta.stop_reason).toBe(whole.stop_reason);
    expect(end.usage.output_tokens).toBe(whole.usage.output_tokens);

    // The SDK's message stream assembles the same message.
    const stream = client.messages.stream(params);
    let streamed = "";
    stream.on("text", (delta) => (streamed += delta));
    const final = await stream.finalMessage();
    expect(final.content).toEqual(whole.content);
    expect(streamed).toBe(text);
    expect(final.stop_reason).toBe(whole.stop_reason);
    expect(final.usage.output_tokens).toBe(whole.usage.output_tokens);
  });

  it("reads a repeated prompt from the cache, and count_tokens counts what the generation sees", async () => {
    const params: Params = {
      model: MODEL,
      max_tokens: 8,
      system: [{ type: "text", text: "You are a coding agent." }],
      tools: TOOLS,
      messages: [{ role: "user", content: "Which file holds the entry point? ".repeat(6) }],
    };
    const { input_tokens: counted } = await client.messages.countTokens({
      model: MODEL,
      system: params.system,
      tools: params.tools,
      messages: params.messages,
    });
    expect(counted).toBeGreaterThan(100);
    const first = await client.messages.create(params);
    expect(promptTotal(first.usage)).toBe(counted);
    const again = await client.messages.create(params);
    expect(promptTotal(again.usage)).toBe(counted);
    // Everything but the last prompt token, whose logits give the first new token.
    expect(again.usage.cache_read_input_tokens).toBe(counted - 1);
    expect(again.usage.cache_creation_input_tokens).toBe(1);
    expect(again.usage.input_tokens).toBe(0);
    // The sampling parameters Anthropic defines are taken (temperature on Anthropic's 0..1).
    const sampled = await client.messages.create({
      ...params,
      temperature: 0.7,
      top_p: 0.9,
      top_k: 40,
      stop_sequences: ["\n\n\n", "zz"],
    } as Params);
    expect(sampled.usage.cache_read_input_tokens).toBe(counted - 1);
  });

  it("round-trips a tool call: tool_use out, tool_result back, and the model continues", async () => {
    const ajv = new Ajv();
    const validate = ajv.compile(TOOLS[0].input_schema);
    const messages: Anthropic.MessageParam[] = [{ role: "user", content: "Read the README, please." }];
    const base = { model: MODEL, max_tokens: 64, system: "You are a coding agent.", tools: TOOLS };
    const called = await client.messages.create({
      ...base,
      messages,
      tool_choice: { type: "tool", name: TOOLS[0].name },
    });
    expect(called.stop_reason).toBe("tool_use");
    const uses = called.content.filter((b): b is Anthropic.ToolUseBlock => b.type === "tool_use");
    expect(uses.map((u) => u.name)).toEqual([TOOLS[0].name]);
    expect(validate(uses[0].input)).toBe(true);

    messages.push({ role: "assistant", content: called.content as Anthropic.ContentBlockParam[] });
    messages.push({
      role: "user",
      content: [
        {
          type: "tool_result",
          tool_use_id: uses[0].id,
          content: [{ type: "text", text: "# kvpark\n\nAn inference service." }],
        },
        { type: "text", text: "Summarize it." },
      ],
    });
    const next = await client.messages.create({ ...base, messages, tool_choice: { type: "none" } });
    expect(["end_turn", "max_tokens"]).toContain(next.stop_reason);
    expect(next.content.every((b) => b.type === "text")).toBe(true);
    // The first turn's prompt and its tool call come from the cache.
    expect(next.usage.cache_read_input_tokens).toBeGreaterThanOrEqual(promptTotal(called.usage));

    // Streamed, a tool call arrives as input_json_delta, which the SDK assembles into the input.
    const stream = client.messages.stream({ ...base, messages, tool_choice: { type: "any" } });
    let json = "";
    stream.on("inputJson", (partial) => (json += partial));
    const streamed = await stream.finalMessage();
    expect(streamed.stop_reason).toBe("tool_use");
    const use = streamed.content.find((b): b is Anthropic.ToolUseBlock => b.type === "tool_use")!;
    expect(use.input).toEqual(JSON.parse(json));
    expect(TOOLS.map((t) => t.name)).toContain(use.name);
  });

  it("takes thinking blocks in the history, a thinking setting and an error tool_result", async () => {
    const uses = await client.messages.create({
      model: MODEL,
      max_tokens: 64,
      tools: TOOLS,
      tool_choice: { type: "any" },
      messages: [{ role: "user", content: "Run the tests." }],
    });
    const use = uses.content.find((b) => b.type === "tool_use")!;
    const res = await client.messages.create({
      model: MODEL,
      max_tokens: 4,
      tools: TOOLS,
      thinking: { type: "enabled", budget_tokens: 1024 },
      messages: [
        { role: "user", content: "Run the tests." },
        {
          role: "assistant",
          content: [{ type: "thinking", thinking: "The tests live in test/.", signature: "" }, use],
        },
        {
          role: "user",
          content: [{ type: "tool_result", tool_use_id: use.id, content: "exit 1", is_error: true }],
        },
      ],
    });
    expect(res.type).toBe("message");
  });

  it("answers errors in Anthropic's shape with Anthropic's statuses", async () => {
    const hello: Params = { model: MODEL, max_tokens: 4, messages: [{ role: "user", content: "Hello" }] };

    const malformed = await post(server, "/v1/messages", "{not json");
    expect(malformed.status).toBe(400);
    expect(malformed.body).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
    expect((malformed.body.error as { message: string }).message).toMatch(/not valid JSON/);
    expect(malformed.body.request_id).toMatch(/^req_/);
    expect(malformed.headers.get("request-id")).toBe(malformed.body.request_id);

    const unknown = await failure(() => client.messages.create({ ...hello, frequency_penalty: 1 } as Params));
    expect(unknown).toBeInstanceOf(Anthropic.BadRequestError);
    expect([unknown.status, unknown.type]).toEqual([400, "invalid_request_error"]);
    expect(unknown.apiMessage).toBe("frequency_penalty: unknown field");

    const refusals: [Params, RegExp][] = [
      [{ ...hello, temperature: 1.5 } as Params, /^temperature: must be between 0 and 1/],
      [{ ...hello, max_tokens: undefined } as unknown as Params, /^max_tokens: required/],
      [{ ...hello, mcp_servers: [] } as unknown as Params, /^mcp_servers: not supported/],
      [
        {
          ...hello,
          messages: [
            {
              role: "user",
              content: [{ type: "image", source: { type: "url", url: "http://127.0.0.1/x.png" } }],
            },
          ],
        },
        /^messages\[0\]\.content\[0\]\.type: image blocks are not supported/,
      ],
      [
        {
          ...hello,
          messages: [
            { role: "user", content: "x" },
            { role: "assistant", content: "y" },
            { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "z" }] },
          ],
        },
        /^messages\[2\]\.content\[0\]\.tool_use_id: no earlier tool_use has id "toolu_1"/,
      ],
      [
        { ...hello, tools: TOOLS, tool_choice: { type: "tool", name: "nope" } },
        /^tool_choice\.name: no tool/,
      ],
      [
        { ...hello, tools: [{ type: "web_search_20250305", name: "web_search" }] } as Params,
        /^tools\[0\]\.type: "web_search_20250305" is not supported/,
      ],
      [{ ...hello, messages: [{ role: "assistant", content: "Sure" }] }, /prefill\) is not supported/],
    ];
    for (const [params, message] of refusals) {
      const err = await failure(() => client.messages.create(params));
      expect([err.status, err.type]).toEqual([400, "invalid_request_error"]);
      expect(err.apiMessage).toMatch(message);
    }

    const wrongKey = await failure(() =>
      anthropicClient(server, { apiKey: "not-a-token-of-this-server" }).messages.create(hello),
    );
    expect(wrongKey).toBeInstanceOf(Anthropic.AuthenticationError);
    expect([wrongKey.status, wrongKey.type]).toEqual([401, "authentication_error"]);
    const noKey = await post(server, "/v1/messages", JSON.stringify(hello), { "x-api-key": "" });
    expect(noKey.status).toBe(401);
    expect((noKey.body.error as { message: string }).message).toMatch(/x-api-key/);
    // A bearer token (the SDK's authToken, Claude Code's ANTHROPIC_AUTH_TOKEN) authenticates too.
    const bearer = new Anthropic({ baseURL: server.url, apiKey: null, authToken: TOKEN, maxRetries: 0 });
    expect((await bearer.messages.create(hello)).type).toBe("message");

    const model = await failure(() => client.messages.create({ ...hello, model: "claude-nonexistent-1" }));
    expect(model).toBeInstanceOf(Anthropic.NotFoundError);
    expect([model.status, model.type]).toEqual([404, "not_found_error"]);

    const big = await failure(() =>
      client.messages.create({ ...hello, messages: [{ role: "user", content: "x".repeat(BODY_LIMIT) }] }),
    );
    expect([big.status, big.type]).toEqual([413, "request_too_large"]);
  });

  describe("cache_control breakpoints pin the prompt's prefix, as KVBlocks Lookup and Stats show", () => {
    const pins = () => anthropicClient(server, { apiKey: PIN_TOKEN });
    const lookup = (prompt: MessageInitShape<typeof PromptSchema>) =>
      grpcCall<LookupResponse>(server, KVBlocksService, "lookup", { prompt }, PIN_TOKEN);
    const pinned = async () =>
      Number(
        (await grpcCall<StatsResponse>(server, KVBlocksService, "stats", {}, PIN_TOKEN)).ram!.pinnedBlocks,
      );
    const unpin = (prompt: MessageInitShape<typeof PromptSchema>) =>
      grpcCall<UnpinResponse>(
        server,
        KVBlocksService,
        "unpin",
        { blocks: { target: { case: "prompt", value: prompt } } },
        PIN_TOKEN,
      );
    const system = "You are a careful assistant who reads the whole repository first. ".repeat(12);
    const question = "Where does the cache keep its blocks, and how are they keyed? ".repeat(10);

    it("pins up to a system block, and nothing after it", async () => {
      expect(await pinned()).toBe(0);
      await pins().messages.create({
        model: MODEL,
        max_tokens: 4,
        system: [{ type: "text", text: system, cache_control: { type: "ephemeral", ttl: "1h" } }],
        messages: [{ role: "user", content: question }],
      });
      const prefix = chat([{ role: "system", content: system }], false);
      const cached = await lookup(prefix);
      expect(cached.cachedTokens).toBe(cached.promptTokens);
      expect(cached.blocks.length).toBeGreaterThan(1);
      expect(await pinned()).toBe(cached.blocks.length);
      const whole = await lookup(
        chat(
          [
            { role: "system", content: system },
            { role: "user", content: question },
          ],
          true,
        ),
      );
      expect(whole.blocks.length).toBeGreaterThan(cached.blocks.length + 1);
      // The pin is on exactly the prefix's blocks.
      expect((await unpin(prefix)).unpinnedBlocks).toBe(cached.blocks.length);
      expect(await pinned()).toBe(0);
    });

    it("pins up to a block of the last message, and the whole prompt with a top-level cache_control", async () => {
      const answer = await pins().messages.create({
        model: MODEL,
        max_tokens: 16,
        system,
        messages: [{ role: "user", content: question }],
      });
      const said = (answer.content[0] as Anthropic.TextBlock).text;
      const history: Anthropic.MessageParam[] = [
        { role: "user", content: question },
        { role: "assistant", content: said },
        {
          role: "user",
          content: [
            { type: "text", text: "And the pins?", cache_control: { type: "ephemeral" } },
            { type: "text", text: "Briefly." },
          ],
        },
      ];
      await pins().messages.create({ model: MODEL, max_tokens: 4, system, messages: history });
      // The cut conversation renders the last message with its first block only, so the prefix is
      // the conversation up to "And the pins?", which the whole prompt continues with "\nBriefly.".
      const upTo = [
        { role: "system", content: system },
        { role: "user", content: question },
        { role: "assistant", content: said },
      ];
      const before = await lookup(chat(upTo, false));
      const through = await lookup(chat([...upTo, { role: "user", content: "And the pins?" }], false));
      // The cut rendering is cached up to the end of the block's text (it then closes the message
      // where the prompt goes on): those are the tokens the server pinned, in whole blocks.
      expect(through.cachedTokens).toBeGreaterThan(before.promptTokens);
      expect(through.cachedTokens).toBeLessThan(through.promptTokens);
      const n = await pinned();
      expect(n).toBe(through.blocks.length);
      expect((await unpin(chat(upTo, false))).unpinnedBlocks).toBe(before.blocks.length);

      const whole = [...upTo, { role: "user", content: "And the pins?\nBriefly." }];
      await unpin(chat(whole, true));
      expect(await pinned()).toBe(0);
      await pins().messages.create({
        model: MODEL,
        max_tokens: 4,
        system,
        messages: history.map((m, i) => (i === 2 ? { role: "user", content: "And the pins?\nBriefly." } : m)),
        cache_control: { type: "ephemeral" },
      } as Params);
      const all = await lookup(chat(whole, true));
      expect(all.cachedTokens).toBe(all.promptTokens);
      expect(await pinned()).toBe(all.blocks.length);
      expect((await unpin(chat(whole, true))).unpinnedBlocks).toBe(all.blocks.length);
    });

    it("pins through a tool's declaration, and refuses bad breakpoints with the field named", async () => {
      await pins().messages.create({
        model: MODEL,
        max_tokens: 4,
        system,
        tools: TOOLS.map((t, i) => (i === 1 ? { ...t, cache_control: { type: "ephemeral" as const } } : t)),
        messages: [{ role: "user", content: question }],
      });
      // The conversation cut after the second tool: its rendering shares the prompt's tokens up to
      // the end of that tool's declaration.
      const upToTools = (count: number): MessageInitShape<typeof PromptSchema> => ({
        kind: {
          case: "chat",
          value: {
            messages: [{ role: "system", content: system }],
            tools: TOOLS.slice(0, count).map((t) => ({
              name: t.name,
              description: t.description,
              parametersJson: JSON.stringify(t.input_schema),
            })),
            addGenerationPrompt: false,
          },
        },
      });
      const cut = await lookup(upToTools(2));
      const all = await lookup(upToTools(3));
      expect(cut.cachedTokens).toBeLessThan(cut.promptTokens);
      expect(all.cachedTokens).toBe(all.promptTokens);
      expect(await pinned()).toBe(cut.blocks.length);
      expect(cut.blocks.length).toBeLessThan(all.blocks.length);
      expect((await unpin(upToTools(3))).unpinnedBlocks).toBe(cut.blocks.length);

      const ttl = await failure(() =>
        pins().messages.create({
          model: MODEL,
          max_tokens: 4,
          system: [{ type: "text", text: system, cache_control: { type: "ephemeral", ttl: "2h" } as never }],
          messages: [{ role: "user", content: question }],
        }),
      );
      expect([ttl.status, ttl.apiMessage]).toEqual([
        400,
        'system[0].cache_control.ttl: must be "5m" or "1h", got "2h"',
      ]);
      const mark = { type: "text" as const, text: "x", cache_control: { type: "ephemeral" as const } };
      const five = await failure(() =>
        pins().messages.create({
          model: MODEL,
          max_tokens: 4,
          messages: [{ role: "user", content: [mark, mark, mark, mark, mark] }],
        }),
      );
      expect([five.status, five.apiMessage]).toEqual([
        400,
        "messages[0].content[4]: at most 4 blocks may carry cache_control",
      ]);
      expect(await pinned()).toBe(0);
    });
  });

  it("serves HTTP/2 clients too, streamed and not", async () => {
    const session = http2.connect(server.url);
    const request = (path: string, body: object) =>
      new Promise<{ status: number; type: string; text: string }>((resolve, reject) => {
        const stream = session.request({
          ":method": "POST",
          ":path": path,
          "content-type": "application/json",
          authorization: `Bearer ${TOKEN}`,
          "anthropic-version": "2023-06-01",
        });
        let status = 0;
        let type = "";
        let text = "";
        stream.on("response", (h) => {
          status = Number(h[":status"]);
          type = String(h["content-type"]);
        });
        stream.setEncoding("utf8");
        stream.on("data", (d: string) => (text += d));
        stream.on("end", () => resolve({ status, type, text }));
        stream.on("error", reject);
        stream.end(JSON.stringify(body));
      });
    try {
      const hello = { model: MODEL, max_tokens: 6, messages: [{ role: "user", content: "Hello" }] };
      const whole = await request("/v1/messages", hello);
      expect([whole.status, whole.type]).toEqual([200, "application/json"]);
      const message = JSON.parse(whole.text) as Anthropic.Message;
      expect(message.type).toBe("message");
      const streamed = await request("/v1/messages", { ...hello, stream: true });
      expect([streamed.status, streamed.type]).toEqual([200, "text/event-stream; charset=utf-8"]);
      const events = streamed.text
        .trim()
        .split("\n\n")
        .map((e) => {
          const [name, data] = e.split("\n");
          const parsed = JSON.parse(data.replace(/^data: /, "")) as { type: string };
          expect(name).toBe(`event: ${parsed.type}`);
          return parsed;
        });
      expect(events[0].type).toBe("message_start");
      expect(events.at(-1)!.type).toBe("message_stop");
      const text = events
        .flatMap((e) =>
          e.type === "content_block_delta" ? [(e as Anthropic.RawContentBlockDeltaEvent).delta] : [],
        )
        .map((d) => (d as Anthropic.TextDelta).text)
        .join("");
      expect(text).toBe((message.content[0] as Anthropic.TextBlock).text);
      const count = await request("/v1/messages/count_tokens", { model: MODEL, messages: hello.messages });
      expect(JSON.parse(count.text).input_tokens).toBe(promptTotal(message.usage));
    } finally {
      session.close();
    }
  });

  // Last: it ends the engine, which the server then restarts.
  it("ends a stream the engine fails mid-way with an error event, and answers 529 while it restarts", async () => {
    const long = await client.messages.create({
      model: MODEL,
      max_tokens: 4000,
      messages: [{ role: "user", content: "Write a long story." }],
      stream: true,
    });
    const it = long[Symbol.asyncIterator]();
    let next = await it.next();
    while (!next.done && next.value.type !== "content_block_delta") next = await it.next();
    expect(next.done).toBe(false);
    const abort = await post(
      server,
      "/v1/messages",
      JSON.stringify({
        model: MODEL,
        max_tokens: 4,
        messages: [{ role: "user", content: "__kvpark_abort__" }],
      }),
    );
    expect(abort.status).toBe(529);
    expect(abort.body).toMatchObject({ type: "error", error: { type: "overloaded_error" } });
    const err = await failure(async () => {
      for (let n = await it.next(); !n.done; n = await it.next());
    });
    expect(err.type).toBe("overloaded_error");
    expect(err.apiMessage).toMatch(/engine stopped/);

    await server.waitEvent("engine_exit");
    const starting = await failure(() =>
      client.messages.create({ model: MODEL, max_tokens: 4, messages: [{ role: "user", content: "Hi" }] }),
    );
    expect([starting.status, starting.type]).toEqual([529, "overloaded_error"]);
  });
});
