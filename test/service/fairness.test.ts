import { Code, ConnectError } from "@connectrpc/connect";
import { FinishReason, type PrefillStreamResponse } from "../../gen/kvpark/v1/inference_pb";
import { kvparkClients } from "../helpers/clients";
import { startServer, type ServerProcess } from "../helpers/server";

const TOKENS = { a: "tenant-a-token-0000001", b: "tenant-b-token-0000001" };
const AUTH = ["--auth-tokens", `a=${TOKENS.a},b=${TOKENS.b}`];
const IDLE_SECONDS = 3;

type Clients = ReturnType<typeof kvparkClients>;

/** A PrefillStream whose client sends `pieces` and then nothing until `close` ends its side. */
function openPrefill(clients: Clients, pieces: number[][]) {
  let close!: () => void;
  const closed = new Promise<void>((resolve) => (close = resolve));
  async function* requests() {
    for (const ids of pieces) yield { chunk: { case: "tokens" as const, value: { ids } } };
    await closed;
  }
  const responses = clients.inference.prefillStream(requests())[Symbol.asyncIterator]();
  return { responses, close };
}

/** Closes a PrefillStream and reads it to its end: its last message carries the handle. */
async function finish(stream: ReturnType<typeof openPrefill>): Promise<PrefillStreamResponse> {
  stream.close();
  let last: PrefillStreamResponse | undefined;
  for (let next = await stream.responses.next(); !next.done; next = await stream.responses.next())
    last = next.value;
  return last!;
}

/** The error a call fails with. */
async function failure(call: () => Promise<unknown>): Promise<ConnectError> {
  const err = await call().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  return err as ConnectError;
}

/** The finish reason of a short Generate. */
async function generate(clients: Clients): Promise<FinishReason | undefined> {
  let reason: FinishReason | undefined;
  for await (const res of clients.inference.generate({
    prompt: { kind: { case: "tokens", value: { ids: [11, 12, 13, 14] } } },
    sampling: { maxTokens: 2, temperature: 0 },
  })) {
    if (res.event.case === "finished") reason = res.event.value.finishReason;
  }
  return reason;
}

const PIECE = Array.from({ length: 20 }, (_, i) => 30 + i);

describe("--tenant-requests-max", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer({ args: [...AUTH, "--requests-max", "8", "--tenant-requests-max", "4"] });
  });
  afterAll(() => server.stop());

  it("refuses a tenant's 5th call while another tenant's Generate is served", async () => {
    const a = kvparkClients(server, TOKENS.a);
    const b = kvparkClients(server, TOKENS.b);
    const held = [];
    for (let i = 0; i < 4; i++) {
      const stream = openPrefill(a, [PIECE]);
      // Its first progress says the call was admitted and holds its slot.
      const first = await stream.responses.next();
      expect(first.value).toMatchObject({ tokensReceived: 20, handle: "" });
      held.push(stream);
    }
    const fifth = openPrefill(a, [PIECE]);
    const refused = await failure(() => fifth.responses.next());
    fifth.close();
    expect([refused.code, refused.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "tenant busy: this tenant already has 4 generation requests in flight, its limit (--tenant-requests-max); retry when one of them has ended",
    ]);
    // The same tenant's Generate is refused too; the other tenant's is not.
    expect((await failure(() => generate(a))).code).toBe(Code.ResourceExhausted);
    expect(await generate(b)).toBe(FinishReason.MAX_TOKENS);
    // A stream that ends gives its slot back before the client hears its end.
    const last = await finish(held.pop()!);
    expect(last.handle).toMatch(/^ph_[0-9a-f]{32}$/);
    expect(await generate(a)).toBe(FinishReason.MAX_TOKENS);
    for (const stream of held) await finish(stream);
  });
});

describe("--prefill-idle-seconds", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer({
      args: ["--requests-max", "1", "--prefill-idle-seconds", String(IDLE_SECONDS)],
    });
  });
  afterAll(() => server.stop());

  const IDLE_MESSAGE = `PrefillStream idle: no message arrived for ${IDLE_SECONDS} seconds (--prefill-idle-seconds), so the call was ended and its context dropped; send the next piece sooner, or close the stream once the context is complete`;

  it("ends an idle PrefillStream with DEADLINE_EXCEEDED and frees its slot", async () => {
    const clients = kvparkClients(server);
    const stream = openPrefill(clients, [PIECE]);
    try {
      expect((await stream.responses.next()).value).toMatchObject({ tokensReceived: 20 });
      // The stream holds the only slot while it is open...
      const busy = await failure(() => generate(clients));
      expect([busy.code, busy.rawMessage]).toEqual([
        Code.ResourceExhausted,
        "server busy: 1 generation requests in flight (--requests-max); retry later",
      ]);
      // ...until its silence ends it.
      const idle = await failure(async () => {
        for (let next = await stream.responses.next(); !next.done; next = await stream.responses.next());
      });
      expect([idle.code, idle.rawMessage]).toEqual([Code.DeadlineExceeded, IDLE_MESSAGE]);
      expect(await generate(clients)).toBe(FinishReason.MAX_TOKENS);
    } finally {
      stream.close();
    }
  });

  it("ends a PrefillStream that never sends its first message the same way", async () => {
    const clients = kvparkClients(server);
    const stream = openPrefill(clients, []);
    try {
      const idle = await failure(() => stream.responses.next());
      expect([idle.code, idle.rawMessage]).toEqual([Code.DeadlineExceeded, IDLE_MESSAGE]);
    } finally {
      stream.close();
    }
  });

  it("keeps a PrefillStream open longer than the idle time while its client sends", async () => {
    const clients = kvparkClients(server);
    // Four pieces half the idle time apart: the call outlives the idle time, no gap reaches it.
    async function* requests() {
      for (let i = 0; i < 4; i++) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, (IDLE_SECONDS * 1000) / 2));
        yield { chunk: { case: "tokens" as const, value: { ids: PIECE } } };
      }
    }
    let last: PrefillStreamResponse | undefined;
    for await (const res of clients.inference.prefillStream(requests())) last = res;
    expect(last?.tokensReceived).toBe(80);
    expect(last!.handle).toMatch(/^ph_[0-9a-f]{32}$/);
  });
});
