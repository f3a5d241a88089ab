import * as http2 from "node:http2";
import { startServer, type ServerProcess } from "../helpers/server";

/** A streamed chat completion over HTTP/2 that the client resets after its first event. */
function streamThenReset(server: ServerProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(server.url);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": "/v1/chat/completions",
      "content-type": "application/json",
    });
    stream.end(
      JSON.stringify({
        messages: [{ role: "user", content: "Write a long story." }],
        max_tokens: 4000,
        stream: true,
      }),
    );
    stream.on("response", (headers) => {
      if (headers[":status"] !== 200) reject(new Error(`status ${headers[":status"]}`));
    });
    stream.once("data", () => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
      resolve();
    });
    stream.on("error", () => undefined);
  });
}

async function chat(server: ServerProcess): Promise<number> {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 2 }),
  });
  await res.text();
  return res.status;
}

describe("a client that resets its HTTP/2 stream", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer({ args: ["--requests-max", "1"] });
  });
  afterAll(() => server.stop());

  it("cancels its generation and frees its admission slot", async () => {
    await streamThenReset(server);
    // The only slot is free again once the cancel has reached the handler: no 429 for long.
    let status = 0;
    for (let attempt = 0; attempt < 40 && status !== 200; attempt++) {
      status = await chat(server);
      if (status === 429) await new Promise((r) => setTimeout(r, 50));
    }
    expect(status).toBe(200);
  });
});
