import * as http from "node:http";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  ExportMetricsServiceRequestSchema,
  ExportMetricsServiceResponseSchema,
  type ExportMetricsServiceRequest,
} from "./gen/opentelemetry/proto/collector/metrics/v1/metrics_service_pb";
import {
  ExportTraceServiceRequestSchema,
  ExportTraceServiceResponseSchema,
  type ExportTraceServiceRequest,
} from "./gen/opentelemetry/proto/collector/trace/v1/trace_service_pb";

/** One decoded export request and the bytes it arrived as. */
export interface Received<T> {
  transport: "grpc" | "http";
  raw: Buffer;
  message: T;
}

/**
 * An OTLP endpoint on loopback, as a collector would offer it: OTLP/gRPC (TraceService and
 * MetricsService Export) on one port and OTLP/HTTP with protobuf bodies (/v1/traces, /v1/metrics) on
 * another. Requests are decoded with the messages generated from the vendored OTLP protos.
 */
export class OtlpReceiver {
  readonly traces: Received<ExportTraceServiceRequest>[] = [];
  readonly metrics: Received<ExportMetricsServiceRequest>[] = [];
  grpcPort = 0;
  httpPort = 0;
  private readonly grpcServer = new grpc.Server();
  private readonly httpServer: http.Server;

  constructor() {
    const unary = <I extends DescMessage, O extends DescMessage>(
      path: string,
      input: I,
      output: O,
      store: (raw: Buffer, message: MessageShape<I>) => void,
    ) => {
      const definition = {
        Export: {
          path,
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (m: MessageShape<O>) => Buffer.from(toBinary(output, m)),
          responseDeserialize: (b: Buffer) => fromBinary(output, b),
        },
      };
      this.grpcServer.addService(definition, {
        Export: (
          call: grpc.ServerUnaryCall<Buffer, MessageShape<O>>,
          done: grpc.sendUnaryData<MessageShape<O>>,
        ) => {
          store(call.request, fromBinary(input, call.request));
          done(null, create(output));
        },
      });
    };
    unary(
      "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
      ExportTraceServiceRequestSchema,
      ExportTraceServiceResponseSchema,
      (raw, message) => this.traces.push({ transport: "grpc", raw, message }),
    );
    unary(
      "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
      ExportMetricsServiceRequestSchema,
      ExportMetricsServiceResponseSchema,
      (raw, message) => this.metrics.push({ transport: "grpc", raw, message }),
    );
    this.httpServer = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const raw = Buffer.concat(chunks);
        if (req.method !== "POST" || req.headers["content-type"] !== "application/x-protobuf") {
          res.writeHead(415).end();
          return;
        }
        let body: Uint8Array;
        if (req.url === "/v1/traces") {
          this.traces.push({
            transport: "http",
            raw,
            message: fromBinary(ExportTraceServiceRequestSchema, raw),
          });
          body = toBinary(ExportTraceServiceResponseSchema, create(ExportTraceServiceResponseSchema));
        } else if (req.url === "/v1/metrics") {
          this.metrics.push({
            transport: "http",
            raw,
            message: fromBinary(ExportMetricsServiceRequestSchema, raw),
          });
          body = toBinary(ExportMetricsServiceResponseSchema, create(ExportMetricsServiceResponseSchema));
        } else {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { "content-type": "application/x-protobuf" }).end(Buffer.from(body));
      });
    });
  }

  async start(): Promise<void> {
    this.grpcPort = await new Promise<number>((resolve, reject) =>
      this.grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) =>
        err ? reject(err) : resolve(port),
      ),
    );
    await new Promise<void>((resolve) => this.httpServer.listen(0, "127.0.0.1", resolve));
    this.httpPort = (this.httpServer.address() as { port: number }).port;
  }

  async stop(): Promise<void> {
    this.grpcServer.forceShutdown();
    await new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
  }
}
