import * as http2 from "node:http2";
import Ajv from "ajv";
import OpenAI, { APIError } from "openai";
import type { ChatCompletionMessageParam } from "openai/resources/chat/completions";
import { startServer, testModel, type ServerProcess } from "../helpers/server";
import { OPENAI_AGENT_TOOLS as TOOLS, TOKEN, openAiClient } from "./openai-client";

const SAMPLING = { temperature: 1, seed: 7 };

/** The error a call fails with. */
async function failure(call: () => Promise<unknown>): Promise<APIError> {
  try {
    await call();
  } catch (err) {
    expect(err).toBeInstanceOf(OpenAI.APIError);
    return err as APIError;
  }
  throw new Error("the call succeeded");
}

/** A POST of raw bytes, for what the client library cannot send. */
async function post(server: ServerProcess, path: string, body: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}`, ...headers },
    body,
  });
  return { status: res.status, body: (await res.json()) as { error: Record<string, unknown> } };
}

describe("the OpenAI-compatible API, through the official openai client", () => {
  let server: ServerProcess;
  let client: OpenAI;
  let fingerprint: string;
  const model = "tiny";

  beforeAll(async () => {
    server = await startServer({ model: testModel(), args: ["--auth-tokens", `openai=${TOKEN}`] });
    fingerprint = (await server.waitEvent("engine_ready")).fingerprint as string;
    client = openAiClient(server);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("lists the served model and retrieves it", async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => [m.id, m.object, m.owned_by])).toEqual([[model, "model", "kvpark"]]);
    expect((await client.models.retrieve(model)).id).toBe(model);
  });

  it("answers a chat completion whole, and the same one streamed with its usage", async () => {
    const messages: ChatCompletionMessageParam[] = [
      { role: "developer", content: "Answer briefly." },
      {
        role: "user",
        content: [
          { type: "text", text: "Tell me" },
          { type: "text", text: "a story." },
        ],
      },
    ];
    const whole = await client.chat.completions.create({ model, messages, max_tokens: 24, ...SAMPLING });
    expect(whole.id).toMatch(/^chatcmpl-/);
    expect(whole.object).toBe("chat.completion");
    expect(whole.model).toBe(model);
    expect(whole.system_fingerprint).toBe(`fp_${fingerprint.slice(0, 12)}`);
    const choice = whole.choices[0];
    expect(choice.message.role).toBe("assistant");
    expect(typeof choice.message.content).toBe("string");
    expect(["stop", "length"]).toContain(choice.finish_reason);
    const usage = whole.usage!;
    expect(usage.completion_tokens).toBeGreaterThan(0);
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);

    const stream = await client.chat.completions.create({
      model,
      messages,
      max_completion_tokens: 24,
      ...SAMPLING,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let streamedUsage: OpenAI.CompletionUsage | undefined;
    let roles = 0;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      if (chunk.usage) streamedUsage = chunk.usage;
      for (const c of chunk.choices) {
        if (c.delta.role) roles++;
        text += c.delta.content ?? "";
        finish = c.finish_reason ?? finish;
      }
    }
    expect(roles).toBe(1);
    expect(text).toBe(choice.message.content);
    expect(finish).toBe(choice.finish_reason);
    expect(streamedUsage!.prompt_tokens).toBe(usage.prompt_tokens);
    expect(streamedUsage!.completion_tokens).toBe(usage.completion_tokens);
  });

  it("calls a required tool, takes its result back and continues", async () => {
    const ajv = new Ajv();
    const messages: ChatCompletionMessageParam[] = [
      { role: "system", content: "You are a coding agent." },
      { role: "user", content: "Run the tests." },
    ];
    const first = await client.chat.completions.create({
      model,
      messages,
      tools: TOOLS,
      tool_choice: "required",
      // Room for more than one call: "required" lets the model make several (this seed makes two).
      max_tokens: 400,
      ...SAMPLING,
    });
    const choice = first.choices[0];
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBeNull();
    const calls = choice.message.tool_calls!;
    expect(calls.length).toBeGreaterThan(1);
    for (const call of calls) {
      if (call.type !== "function") throw new Error(`a ${call.type} call`);
      const tool = TOOLS.find((t) => t.function.name === call.function.name);
      expect(tool).toBeDefined();
      expect(call.id).toMatch(/^call_/);
      expect(ajv.validate(tool!.function.parameters!, JSON.parse(call.function.arguments))).toBe(true);
    }
    messages.push(choice.message);
    for (const call of calls)
      messages.push({ role: "tool", tool_call_id: call.id, content: "2 tests failed" });
    const second = await client.chat.completions.create({
      model,
      messages,
      tools: TOOLS,
      tool_choice: "none",
      max_tokens: 16,
      ...SAMPLING,
    });
    expect(second.choices[0].message.tool_calls).toBeUndefined();
    expect(["stop", "length"]).toContain(second.choices[0].finish_reason);
    // The continuation's prompt holds the whole first turn: it is reused from the cache.
    expect(second.usage!.prompt_tokens).toBeGreaterThan(first.usage!.prompt_tokens);
    expect(second.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(
      first.usage!.prompt_tokens / 2,
    );
  });

  it("streams a named tool call as OpenAI does, so that the client's stream helper assembles it", async () => {
    const request = {
      model,
      messages: [{ role: "user" as const, content: "Search the code for a bug." }],
      tools: TOOLS,
      tool_choice: { type: "function" as const, function: { name: "search" } },
      max_tokens: 96,
      ...SAMPLING,
    };
    const streamed = await client.chat.completions.stream(request).finalChatCompletion();
    const whole = await client.chat.completions.create(request);
    const calls = (c: OpenAI.ChatCompletion) =>
      c.choices[0].message.tool_calls!.map((t) =>
        t.type === "function" ? [t.function.name, t.function.arguments] : [],
      );
    expect(calls(streamed)).toEqual(calls(whole));
    expect(calls(streamed)[0][0]).toBe("search");
    expect(streamed.choices[0].finish_reason).toBe("tool_calls");
  });

  it("writes JSON valid under a response_format schema, and any object for json_object", async () => {
    const schema = {
      type: "object",
      properties: {
        name: { type: "string", maxLength: 10 },
        age: { type: "integer", minimum: 0, maximum: 120 },
        tags: { type: "array", items: { type: "string", enum: ["a", "b"] }, maxItems: 3 },
      },
      required: ["name", "age", "tags"],
      additionalProperties: false,
    };
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Describe a person as JSON." }],
      response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } },
      max_tokens: 200,
      ...SAMPLING,
    });
    expect(res.choices[0].finish_reason).toBe("stop");
    expect(new Ajv().validate(schema, JSON.parse(res.choices[0].message.content!))).toBe(true);

    const object = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Any JSON object." }],
      response_format: { type: "json_object" },
      max_tokens: 400,
      // A seed whose object has keys and ends within max_tokens.
      temperature: 1,
      seed: 9,
    });
    expect(object.choices[0].finish_reason).toBe("stop");
    const value: unknown = JSON.parse(object.choices[0].message.content!);
    expect(typeof value === "object" && value !== null && !Array.isArray(value)).toBe(true);
    expect(Object.keys(value as object).length).toBeGreaterThan(0);
  });

  it("reports a repeated prompt's cached tokens in the usage, with kvpark's breakdown", async () => {
    const messages: ChatCompletionMessageParam[] = [
      { role: "user", content: `A long question: ${"why is the sky blue? ".repeat(40)}` },
    ];
    const first = await client.chat.completions.create({ model, messages, max_tokens: 4, ...SAMPLING });
    const again = await client.chat.completions.create({ model, messages, max_tokens: 4, ...SAMPLING });
    const usage = again.usage as OpenAI.CompletionUsage & {
      kvpark: { ram_tokens: number; ssd_tokens: number; recomputed_tokens: number; ttft_ms: number };
    };
    expect(usage.prompt_tokens).toBe(first.usage!.prompt_tokens);
    const cached = usage.prompt_tokens_details!.cached_tokens!;
    // Everything but the prompt's last token, which is computed for its logits.
    expect(cached).toBe(usage.prompt_tokens - 1);
    expect(usage.kvpark.ram_tokens + usage.kvpark.ssd_tokens).toBe(cached);
    expect(usage.kvpark.recomputed_tokens).toBe(usage.prompt_tokens - cached);
    expect(usage.kvpark.ttft_ms).toBeGreaterThan(0);
    expect(again.choices[0].message.content).toBe(first.choices[0].message.content);
  });

  it("completes text and token-id prompts, whole and streamed", async () => {
    const whole = await client.completions.create({
      model,
      prompt: "Once upon a time",
      max_tokens: 12,
      ...SAMPLING,
    });
    expect(whole.id).toMatch(/^cmpl-/);
    expect(whole.object).toBe("text_completion");
    expect(whole.usage!.completion_tokens).toBeGreaterThan(0);
    let text = "";
    const stream = await client.completions.create({
      model,
      prompt: "Once upon a time",
      max_tokens: 12,
      ...SAMPLING,
      stream: true,
    });
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(whole.choices[0].text);
    const ids = await client.completions.create({ model, prompt: [5, 6, 7, 8], max_tokens: 4, ...SAMPLING });
    expect(ids.usage!.prompt_tokens).toBe(4);
    const echo = await failure(() => client.completions.create({ model, prompt: "x", echo: true }));
    expect([echo.status, echo.param]).toEqual([400, "echo"]);
    const bestOf = await failure(() => client.completions.create({ model, prompt: "x", best_of: 3 }));
    expect([bestOf.status, bestOf.param]).toEqual([400, "best_of"]);
  });

  it("serves HTTP/2 with prior knowledge, as gRPC clients connect", async () => {
    const session = http2.connect(server.url);
    try {
      const body = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = session.request({
          ":method": "POST",
          ":path": "/v1/chat/completions",
          "content-type": "application/json",
          authorization: `Bearer ${TOKEN}`,
        });
        let status = 0;
        let text = "";
        req.on("response", (h) => (status = Number(h[":status"])));
        req.on("data", (d: Buffer) => (text += d.toString()));
        req.on("end", () => resolve({ status, text }));
        req.on("error", reject);
        req.end(
          JSON.stringify({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 3, stream: true }),
        );
      });
      expect(body.status).toBe(200);
      const events = body.text.split("\n\n").filter(Boolean);
      expect(events.at(-1)).toBe("data: [DONE]");
      expect(JSON.parse(events[0].slice("data: ".length)).choices[0].delta.role).toBe("assistant");
    } finally {
      session.close();
    }
  });

  describe("errors, in OpenAI's shape and status", () => {
    const hi: ChatCompletionMessageParam[] = [{ role: "user", content: "Hi" }];

    it("400 for a body that is not JSON", async () => {
      const res = await post(server, "/v1/chat/completions", '{"model": "tiny", "messages": [');
      expect(res.status).toBe(400);
      expect(res.body.error).toEqual({
        message: expect.stringContaining("not valid JSON"),
        type: "invalid_request_error",
        param: null,
        code: null,
      });
    });

    it("400 naming a field that would change the output, an unknown field, and n above 1", async () => {
      const bias = await failure(() =>
        client.chat.completions.create({ model, messages: hi, logit_bias: { "5": 10 } }),
      );
      expect(bias).toBeInstanceOf(OpenAI.BadRequestError);
      expect([bias.status, bias.param, bias.type]).toEqual([400, "logit_bias", "invalid_request_error"]);
      expect(bias.message).toContain("logit_bias");
      const penalty = await failure(() =>
        client.chat.completions.create({ model, messages: hi, frequency_penalty: 0.5 }),
      );
      expect(penalty.param).toBe("frequency_penalty");
      const unknown = await post(
        server,
        "/v1/chat/completions",
        JSON.stringify({ messages: hi, min_p: 0.1 }),
      );
      expect(unknown.status).toBe(400);
      expect(unknown.body.error).toMatchObject({ param: "min_p", code: "unknown_parameter" });
      const n = await failure(() => client.chat.completions.create({ model, messages: hi, n: 2 }));
      expect([n.status, n.param]).toEqual([400, "n"]);
      // Fields that change nothing are accepted.
      const fine = await client.chat.completions.create({
        model,
        messages: hi,
        n: 1,
        user: "u1",
        store: false,
        parallel_tool_calls: true,
        metadata: { a: "b" },
        frequency_penalty: 0,
        max_tokens: 2,
      });
      expect(fine.choices).toHaveLength(1);
    });

    it("400 for an image part and for kvpark's own checks, with the request's field in param", async () => {
      const image = await failure(() =>
        client.chat.completions.create({
          model,
          messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:," } }] }],
        }),
      );
      expect([image.status, image.param]).toEqual([400, "messages[0].content[0].type"]);
      expect(image.message).toContain("text only");
      const temperature = await failure(() =>
        client.chat.completions.create({ model, messages: hi, temperature: 11 }),
      );
      expect([temperature.status, temperature.param]).toEqual([400, "temperature"]);
      const tool = await failure(() =>
        client.chat.completions.create({
          model,
          messages: hi,
          tools: TOOLS,
          tool_choice: { type: "function", function: { name: "nope" } },
        }),
      );
      expect([tool.status, tool.param]).toEqual([400, "tool_choice.function.name"]);
      const long = await failure(() =>
        client.chat.completions.create({
          model,
          messages: [{ role: "user", content: "word ".repeat(9000) }],
        }),
      );
      expect([long.status, long.param, long.code]).toEqual([400, "messages", "context_length_exceeded"]);
    });

    it("401 for a wrong or missing key", async () => {
      const wrong = await failure(() => openAiClient(server, "not-the-token-at-all").models.list());
      expect(wrong).toBeInstanceOf(OpenAI.AuthenticationError);
      expect([wrong.status, wrong.code]).toEqual([401, "invalid_api_key"]);
      const missing = await fetch(`${server.url}/v1/models`);
      expect(missing.status).toBe(401);
      expect(((await missing.json()) as { error: { message: string } }).error.message).toMatch(
        /missing API key/,
      );
    });

    it("404 model_not_found for another model", async () => {
      const err = await failure(() => client.chat.completions.create({ model: "gpt-4o", messages: hi }));
      expect(err).toBeInstanceOf(OpenAI.NotFoundError);
      expect([err.status, err.code, err.param]).toEqual([404, "model_not_found", "model"]);
      expect(err.message).toContain('"gpt-4o"');
    });
  });
});

describe("the OpenAI-compatible API at its limits", () => {
  let server: ServerProcess;
  let client: OpenAI;
  const model = "tiny";
  const hi: ChatCompletionMessageParam[] = [{ role: "user", content: "Hi" }];

  beforeAll(async () => {
    server = await startServer({
      model: testModel(),
      args: [
        "--auth-tokens",
        `openai=${TOKEN}`,
        "--message-bytes-max",
        "4096",
        "--requests-max",
        "2",
        "--test-engine-abort",
      ],
    });
    client = openAiClient(server);
  });
  afterAll(async () => {
    await server?.stop();
  });

  /** A stream that runs until its controller aborts it, once its first chunk has arrived. */
  async function longStream() {
    // Greedy: a sampled stream of the random-weight model can draw the end-of-sequence token early
    // and free its slot before the test is done with it.
    const stream = await client.chat.completions.create({
      model,
      messages: hi,
      max_tokens: 8000,
      temperature: 0,
      stream: true,
    });
    const chunks = stream[Symbol.asyncIterator]();
    await chunks.next();
    return { stream, chunks };
  }

  /** Waits until the server has let go of aborted streams (it sees the clients leave a moment later). */
  async function untilAdmitted(): Promise<void> {
    const one = () => client.chat.completions.create({ model, messages: hi, max_tokens: 1 });
    for (;;) {
      try {
        await Promise.all([one(), one()]);
        return;
      } catch (err) {
        if (!(err instanceof OpenAI.RateLimitError)) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  it("413 for a body over --message-bytes-max", async () => {
    const err = await failure(() =>
      client.chat.completions.create({ model, messages: [{ role: "user", content: "x".repeat(5000) }] }),
    );
    expect(err.status).toBe(413);
    expect(err.message).toContain("4096 bytes");
  });

  it("429 while --requests-max generations are in flight", async () => {
    const running = [await longStream(), await longStream()];
    try {
      const err = await failure(() => client.chat.completions.create({ model, messages: hi, max_tokens: 2 }));
      expect(err).toBeInstanceOf(OpenAI.RateLimitError);
      expect(err.message).toContain("server busy");
    } finally {
      for (const r of running) r.stream.controller.abort();
      await untilAdmitted();
    }
  });

  it("503 when the engine fails, and the error event of a stream it cut", async () => {
    const running = await longStream();
    const err = await failure(() =>
      client.chat.completions.create({ model, messages: [{ role: "user", content: "__kvpark_abort__" }] }),
    );
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect([err.status, err.code]).toEqual([503, "engine_unavailable"]);
    // The stream already under way ends with an error event, which the client raises.
    const cut = await failure(async () => {
      for (let next = await running.chunks.next(); !next.done; next = await running.chunks.next());
    });
    expect(cut.message).toContain("engine stopped");
    await server.waitFor(
      (l) => l.event === "engine_ready" && l !== server.logs.find((f) => f.event === "engine_ready"),
    );
    const after = await client.chat.completions.create({ model, messages: hi, max_tokens: 2 });
    expect(after.choices).toHaveLength(1);
  });
});
