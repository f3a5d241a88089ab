import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb";
import { ServerReflection as ServerReflectionAlpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb";
import { ROOT, startServer, type ServerProcess } from "../helpers/server";

describe("health and reflection", () => {
  let server: ServerProcess;
  const statuses: Status[] = [];

  beforeAll(async () => {
    // The small preset is generated on first use, so the engine is not ready for a few seconds.
    server = await startServer({ ready: false, model: "small" });
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    // Watch from the moment the port opens; the engine is still loading the model then.
    const watch = (async () => {
      for await (const res of health.watch({ service: "" })) {
        statuses.push(res.status);
        if (res.status === Status.SERVING) break;
      }
    })();
    await server.waitEvent("engine_ready", 120_000);
    await watch;
  });
  afterAll(() => server.stop());

  it("goes from NOT_SERVING to SERVING when the model is loaded", async () => {
    expect(statuses).toEqual([Status.NOT_SERVING, Status.SERVING]);
    // The front end loaded its tokenizers, on every worker, before it said it was ready.
    const events = server.logs.map((l) => l.event);
    expect(events.indexOf("tokenizers_ready")).toBeGreaterThan(-1);
    expect(events.indexOf("tokenizers_ready")).toBeLessThan(events.indexOf("engine_ready"));
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    expect((await health.check({ service: "kvpark.v1.InferenceService" })).status).toBe(Status.SERVING);
    await expect(health.check({ service: "no.such.Service" })).rejects.toMatchObject({ code: 5 });
  });

  it("lists kvpark.v1 services over reflection v1 and v1alpha", async () => {
    const transport = createGrpcTransport({ baseUrl: server.url });
    for (const service of [ServerReflection, ServerReflectionAlpha]) {
      const client = createClient(service, transport);
      async function* requests() {
        yield { messageRequest: { case: "listServices" as const, value: "*" } };
        yield {
          messageRequest: {
            case: "fileContainingSymbol" as const,
            value: "kvpark.v1.InferenceService.Generate",
          },
        };
      }
      const answers = [];
      for await (const res of client.serverReflectionInfo(requests())) answers.push(res);
      expect(answers[0].messageResponse.case).toBe("listServicesResponse");
      const names = (answers[0].messageResponse.value as { service: { name: string }[] }).service.map(
        (s) => s.name,
      );
      expect(names).toEqual(
        expect.arrayContaining([
          "kvpark.v1.InferenceService",
          "kvpark.v1.KVBlocksService",
          "grpc.health.v1.Health",
          "grpc.reflection.v1.ServerReflection",
        ]),
      );
      const files = (
        answers[1].messageResponse.value as { fileDescriptorProto: Uint8Array[] }
      ).fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
      // The file and its import, dependencies first.
      expect(files.map((f) => f.name)).toEqual(["kvpark/v1/common.proto", "kvpark/v1/inference.proto"]);
      expect(files[1].service[0].method.map((m) => m.name)).toEqual(["Generate", "PrefillStream"]);
    }
  });

  it("lets a generic tool (buf curl) discover every method", () => {
    const out = execFileSync(
      path.join(ROOT, "node_modules/.bin/buf"),
      ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", server.url],
      {
        encoding: "utf8",
      },
    );
    const methods = out.trim().split("\n");
    expect(methods).toEqual(
      expect.arrayContaining([
        "kvpark.v1.InferenceService/Generate",
        "kvpark.v1.InferenceService/PrefillStream",
        "grpc.health.v1.Health/Check",
        "kvpark.v1.KVBlocksService/GetBlocks",
        "kvpark.v1.KVBlocksService/PutBlocks",
        "grpc.health.v1.Health/Watch",
      ]),
    );
  });
});
