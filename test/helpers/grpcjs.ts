import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescService,
  type MessageShape,
} from "@bufbuild/protobuf";

type Method = DescService["methods"][number];

/**
 * A grpc-js client whose methods serialize with the protobuf-es schemas generated into gen/, so tests
 * call kvpark through the reference gRPC implementation and still get typed messages back.
 */
export function grpcJsClient(
  service: DescService,
  address: string,
  credentials = grpc.credentials.createInsecure(),
) {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods as Method[]) {
    definition[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      requestSerialize: (msg: MessageShape<DescMessage>) =>
        Buffer.from(toBinary(m.input, create(m.input, msg))),
      requestDeserialize: (b: Buffer) => fromBinary(m.input, b),
      responseSerialize: (msg: MessageShape<DescMessage>) => Buffer.from(toBinary(m.output, msg)),
      responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
      originalName: m.name,
    } as grpc.MethodDefinition<unknown, unknown>;
  }
  const Ctor = grpc.makeGenericClientConstructor(definition, service.typeName);
  return new Ctor(address, credentials, {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  }) as unknown as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
}

/** Calls a unary method and resolves with the response or rejects with the grpc-js ServiceError. */
export function unary<T>(
  client: grpc.Client & Record<string, (...args: unknown[]) => unknown>,
  method: string,
  req: unknown,
  opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<T> {
  return new Promise((resolve, reject) => {
    const options: grpc.CallOptions = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
    client[method](
      req,
      opts.metadata ?? new grpc.Metadata(),
      options,
      (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)),
    );
  });
}

/** Reads a server stream to its end; rejects with the ServiceError that ended it, if any. */
export function serverStream<T>(
  client: grpc.Client & Record<string, (...args: unknown[]) => unknown>,
  method: string,
  req: unknown,
  opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const options: grpc.CallOptions = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
    const call = client[method](
      req,
      opts.metadata ?? new grpc.Metadata(),
      options,
    ) as grpc.ClientReadableStream<T>;
    const out: T[] = [];
    call.on("data", (m: T) => out.push(m));
    call.on("error", reject);
    call.on("end", () => resolve(out));
  });
}
