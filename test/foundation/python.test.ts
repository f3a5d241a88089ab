import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ROOT, startServer, type ServerProcess } from "../helpers/server";

const TOKEN = "python-client-token-000001";

describe("Python client (Debian python3-grpcio, stubs from protoc)", () => {
  let server: ServerProcess;
  let stubs: string;

  beforeAll(async () => {
    stubs = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-py-"));
    execFileSync("bash", [path.join(ROOT, "clients/python/generate_stubs.sh"), stubs]);
    server = await startServer({ args: ["--auth-tokens", `py=${TOKEN}`] });
  });
  afterAll(() => server.stop());

  it("gets typed responses and exact status codes", () => {
    const out = JSON.parse(
      execFileSync(
        "/usr/bin/python3",
        [path.join(ROOT, "test/python/check.py"), `127.0.0.1:${server.port}`, TOKEN],
        {
          env: { ...process.env, PYTHONPATH: stubs },
          encoding: "utf8",
        },
      ),
    );
    expect(out.first_event).toBe("started");
    expect(out.prompt_tokens).toBeGreaterThan(0);
    expect(out.last_event).toBe("finished");
    expect(["FINISH_REASON_MAX_TOKENS", "FINISH_REASON_EOS"]).toContain(out.finish_reason);
    // Sampling with a seed is reproducible.
    expect(out.ids_again).toEqual(out.ids);
    expect(out.ids.flat().length).toBe(out.usage_completion);
    expect(out.missing_prompt).toEqual(["INVALID_ARGUMENT", "prompt: required: set text, chat or tokens"]);
    expect(out.bad_max_tokens).toEqual([
      "INVALID_ARGUMENT",
      "sampling.max_tokens: must be between 1 and 8192, got -5",
    ]);
    expect(out.deadline[0]).toBe("DEADLINE_EXCEEDED");
    expect(out.no_token[0]).toBe("UNAUTHENTICATED");
    expect(out.max_tokens_over_limit).toEqual([
      "INVALID_ARGUMENT",
      "sampling.max_tokens: must be between 1 and 8192, got 100000",
    ]);
    expect(out.unknown_model[0]).toBe("INVALID_ARGUMENT");
    expect(out.unknown_model[1]).toMatch(/^model: unknown model "nope"; this server serves "tiny"$/);
    expect(out.bad_token_id[0]).toBe("INVALID_ARGUMENT");
    expect(out.bad_token_id[1]).toMatch(
      /^prompt.tokens.ids\[2\]: token id 4000000 is outside the vocabulary \(size \d+\)$/,
    );
    expect(out.too_long[0]).toBe("OUT_OF_RANGE");
    expect(out.cancelled_code).toBe("CANCELLED");
    expect(out.after_cancel_finish).toBe("FINISH_REASON_MAX_TOKENS");
  });

  it("runs a tool-call round trip: tools in, a parsed tool call out, the result back, the model continues", () => {
    const out = JSON.parse(
      execFileSync(
        "/usr/bin/python3",
        [path.join(ROOT, "test/python/tools.py"), `127.0.0.1:${server.port}`, TOKEN],
        {
          env: { ...process.env, PYTHONPATH: stubs },
          encoding: "utf8",
        },
      ),
    );
    expect(out.calls).toHaveLength(1);
    expect(out.calls[0].name).toBe("get_weather");
    expect(out.calls[0].id).toMatch(/^call_[A-Za-z0-9]+$/);
    expect(["Oslo", "Lima"]).toContain(out.calls[0].arguments.city);
    expect(out.first_finish).toBe("FINISH_REASON_TOOL_CALLS");
    // The continuation reuses the first turn's context and answers in text.
    expect(out.second_reused).toBeGreaterThan(0);
    expect(out.second_events).toEqual(expect.arrayContaining(["started", "finished"]));
    expect(out.second_events).not.toContain("tool_call");
    expect(["FINISH_REASON_MAX_TOKENS", "FINISH_REASON_EOS"]).toContain(out.second_finish);
    expect(out.unmatched_result).toEqual([
      "INVALID_ARGUMENT",
      'prompt.chat.messages[3].tool_call_id: no earlier tool call has id "nope"',
    ]);
  });
});
