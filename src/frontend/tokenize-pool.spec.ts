import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { ChatPromptSchema } from "../../gen/kvpark/v1/common_pb";
import { testModel } from "../../test/helpers/server";
import { KvparkError } from "../errors";
import { ModelTokenizer } from "../model/tokenizer";
import { checkChat, renderChat } from "../rpc/chat";
import { INLINE_TEXT_CHARS_MAX, TokenizePool } from "./tokenize-pool";

// The workers run the compiled worker from dist/ (npm run build), as the server's do under ts-jest.
describe("TokenizePool", () => {
  const dir = testModel();
  const tokenizer = ModelTokenizer.fromDir(dir);
  const pool = new TokenizePool(dir, 2);
  afterAll(() => pool.close());

  const prose = fs.readFileSync(path.join(__dirname, "../model-gen/corpus.txt"), "utf8").slice(0, 20_000);

  it("is ready once every worker has loaded the tokenizer", async () => {
    await expect(pool.ready).resolves.toBeUndefined();
  });

  it("encodes text on either side of the inline limit as this thread's tokenizer does", async () => {
    for (const text of [prose.slice(0, INLINE_TEXT_CHARS_MAX), prose]) {
      for (const special of [true, false]) {
        expect(await pool.encode(text, special)).toEqual(
          tokenizer.encode(text, { addSpecialTokens: special }),
        );
      }
    }
  });

  it("renders and encodes a chat, whole or as a continuation, as renderChat does", async () => {
    const chat = checkChat(
      create(ChatPromptSchema, {
        messages: [
          { role: "system", content: prose.slice(0, 3000) },
          { role: "user", content: prose.slice(3000, 9000) },
        ],
      }),
      "prompt.chat",
    );
    expect(chat.chars).toBeGreaterThan(INLINE_TEXT_CHARS_MAX);
    for (const continuation of [false, true]) {
      expect(await pool.renderChat(chat, "prompt.chat", continuation)).toEqual(
        renderChat(chat, tokenizer, "prompt.chat", continuation),
      );
    }
  });

  it("reports a template's refusal from a worker as the same kvpark error", async () => {
    const refusing = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-pool-"));
    for (const file of ["tokenizer.json", "tokenizer_config.json"])
      fs.copyFileSync(path.join(dir, file), path.join(refusing, file));
    fs.writeFileSync(
      path.join(refusing, "chat_template.jinja"),
      "{% for m in messages %}{% if m.role == 'robot' %}{{ raise_exception('no robots') }}{% endif %}{{ m.content }}{% endfor %}",
    );
    const other = new TokenizePool(refusing, 1);
    try {
      const chat = checkChat(
        create(ChatPromptSchema, { messages: [{ role: "robot", content: prose.slice(0, 1000) }] }),
        "prompt.chat",
      );
      const err = await other.renderChat(chat, "prompt.chat", false).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KvparkError);
      expect([(err as KvparkError).code, (err as KvparkError).message]).toEqual([
        "INVALID_ARGUMENT",
        "prompt.chat: the model's chat template failed: chat template rejected the conversation: no robots",
      ]);
    } finally {
      await other.close();
      fs.rmSync(refusing, { recursive: true, force: true });
    }
  });
});
