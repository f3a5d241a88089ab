// Structured outputs over gRPC: SamplingParams.response_format reaches the engine's constrained
// decoder, and a schema that cannot be used is refused with INVALID_ARGUMENT naming its field while
// the server goes on serving. (In-process coverage with 100 samples per schema and forced tool calls:
// constrained.spec.ts.)
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import Ajv2020 from "ajv/dist/2020";
import { FinishReason, InferenceService, type GenerateRequest } from "../../gen/kvpark/v1/inference_pb";
import { startServer, type ServerProcess } from "../helpers/server";

const FIELD = "sampling.response_format.json_schema.schema_json";
const SCHEMA = {
  type: "object",
  properties: {
    city: { type: "string", minLength: 1, maxLength: 10 },
    days: { type: "integer", minimum: 1, maximum: 14 },
    units: { enum: ["metric", "imperial"] },
    alerts: { type: "array", items: { type: "boolean" }, maxItems: 3 },
  },
  required: ["city", "days", "units"],
};

describe("structured outputs over gRPC", () => {
  let server: ServerProcess;
  let client: ReturnType<typeof createClient<typeof InferenceService>>;

  beforeAll(async () => {
    server = await startServer();
    client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
  });
  afterAll(() => server.stop());

  async function generate(
    responseFormat: NonNullable<GenerateRequest["sampling"]>["responseFormat"],
    seed = 0,
  ): Promise<{ text: string; finish?: FinishReason }> {
    let text = "";
    let finish: FinishReason | undefined;
    const req = {
      prompt: { kind: { case: "text", value: "The forecast, as JSON:" } },
      sampling: { maxTokens: 120, temperature: 1, seed: BigInt(seed), responseFormat },
    } as GenerateRequest;
    for await (const res of client.generate(req)) {
      if (res.event.case === "delta") text += res.event.value.text;
      if (res.event.case === "finished") finish = res.event.value.finishReason;
    }
    return { text, finish };
  }

  async function refusal(schemaJson: string, strict = false): Promise<ConnectError> {
    const format = { format: { case: "jsonSchema", value: { name: "x", schemaJson, strict } } } as never;
    const err = await generate(format).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    return err as ConnectError;
  }

  test("json_schema: every seeded output is valid under the schema and ends with EOS", async () => {
    const validate = new Ajv2020({ strict: false }).compile(SCHEMA);
    const format = {
      format: {
        case: "jsonSchema",
        value: { name: "forecast", schemaJson: JSON.stringify(SCHEMA), strict: true },
      },
    } as never;
    for (let seed = 0; seed < 20; seed++) {
      const out = await generate(format, seed);
      expect(out.finish).toBe(FinishReason.EOS);
      expect(validate(JSON.parse(out.text))).toBe(true);
    }
  });

  test("json_object: the output is a JSON object or, cut by max_tokens, the start of one", async () => {
    let complete = 0;
    for (let seed = 0; seed < 5; seed++) {
      const out = await generate({ format: { case: "jsonObject", value: {} } } as never, seed);
      expect(out.text.startsWith("{")).toBe(true);
      if (out.finish === FinishReason.EOS) {
        expect(JSON.parse(out.text)).toEqual(expect.any(Object));
        complete++;
      } else expect(out.finish).toBe(FinishReason.MAX_TOKENS);
    }
    // At least one object is whole, so the parse above ran.
    expect(complete).toBeGreaterThan(0);
  });

  test("schemas that cannot be used are refused with INVALID_ARGUMENT naming the field", async () => {
    const notJson = await refusal("{not json");
    expect(notJson.code).toBe(Code.InvalidArgument);
    expect(notJson.rawMessage).toMatch(new RegExp(`^${FIELD.replace(/\./g, "\\.")}: not valid JSON \\(`));

    const badType = await refusal(JSON.stringify({ type: "foo" }));
    expect(badType.code).toBe(Code.InvalidArgument);
    expect(badType.rawMessage).toBe(`${FIELD}: unknown type "foo" at the top level`);

    const strict = await refusal(JSON.stringify({ type: "array", uniqueItems: true }), true);
    expect(strict.code).toBe(Code.InvalidArgument);
    expect(strict.rawMessage).toBe(
      `${FIELD}: uniqueItems at the top level cannot be enforced while decoding; remove it or set strict to false`,
    );

    const tooLong = await refusal(JSON.stringify({ description: "x".repeat(70_000) }));
    expect(tooLong.rawMessage).toBe(`${FIELD}: longer than 65536 bytes`);

    // Nothing else was disturbed: the same server still answers, constrained or not.
    const after = await generate({ format: { case: "text", value: {} } } as never);
    expect(after.finish).toBeDefined();
  });
});
