import * as fs from "node:fs";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../gen/kvpark/v1/inference_pb.js";
import {
  KVBlocksService,
  type ExportRequestSchema,
  type ImportRequestSchema,
  type ImportResponse,
} from "../gen/kvpark/v1/kvblocks_pb.js";
import { ModelService } from "../gen/kvpark/v1/model_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";

/** Options of a kvpark client. */
export interface KvparkClientOptions {
  /** Server address, e.g. `http://127.0.0.1:50051` or `https://kvpark.internal:443`. */
  baseUrl: string;
  /** Bearer token sent on every call, when the server requires one. */
  token?: string;
  /** Deadline of calls that set none, in milliseconds (default 60 s). */
  timeoutMs?: number;
  /** Attempts of a unary call that failed with UNAVAILABLE, including the first (default 4). */
  attempts?: number;
  /** First retry delay in milliseconds; doubled each time, with jitter (default 200). */
  backoffMs?: number;
  /** TLS options for https URLs: CA, client certificate and key (PEM). */
  tls?: { ca?: Buffer | string; cert?: Buffer | string; key?: Buffer | string };
  /** A transport to use instead of the default gRPC one (tests, gRPC-Web, Connect). */
  transport?: Transport;
}

/** Typed kvpark clients sharing one connection. */
export interface KvparkClient {
  inference: Client<typeof InferenceService>;
  kvBlocks: Client<typeof KVBlocksService>;
  model: Client<typeof ModelService>;
  health: Client<typeof Health>;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), reject(signal.reason)), { once: true });
  });

/**
 * Retries unary calls that failed with UNAVAILABLE (the engine restarting, a connection reset) with
 * exponential backoff. Streaming calls are not retried: part of their output may already have been
 * consumed, so only the caller can decide whether repeating them is safe.
 */
export function retryInterceptor(attempts: number, backoffMs: number): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (code !== Code.Unavailable || attempt >= attempts || req.signal.aborted) throw err;
        await sleep(backoffMs * 2 ** (attempt - 1) * (0.5 + Math.random()), req.signal);
      }
    }
  };
}

/** Creates typed clients for kvpark's services over gRPC (HTTP/2). */
export function createKvparkClient(options: KvparkClientOptions): KvparkClient {
  const interceptors: Interceptor[] = [retryInterceptor(options.attempts ?? 4, options.backoffMs ?? 200)];
  if (options.token) {
    const token = options.token;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  const transport =
    options.transport ??
    createGrpcTransport({
      baseUrl: options.baseUrl,
      interceptors,
      defaultTimeoutMs: options.timeoutMs ?? 60_000,
      nodeOptions: options.tls
        ? { ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key }
        : undefined,
    });
  return {
    inference: createClient(InferenceService, transport),
    kvBlocks: createClient(KVBlocksService, transport),
    model: createClient(ModelService, transport),
    health: createClient(Health, transport),
  };
}

/** Bytes read from a bundle file per ImportRequest message. */
const IMPORT_PIECE_BYTES = 1024 * 1024;

/**
 * Streams an Export of the caller's blocks (or those `request` selects) into `file`, written as
 * `<file>.part` and renamed when the bundle is complete, so a failed export leaves no file that
 * looks like a bundle. Returns the bundle's size in bytes.
 */
export async function exportBundleToFile(
  client: KvparkClient,
  file: string,
  request: MessageInitShape<typeof ExportRequestSchema> = {},
  options?: CallOptions,
): Promise<number> {
  const part = `${file}.part`;
  const out = await fs.promises.open(part, "w");
  let bytes = 0;
  try {
    for await (const res of client.kvBlocks.export(request, options)) {
      await out.write(res.data);
      bytes += res.data.byteLength;
    }
    await out.sync();
  } catch (err) {
    await out.close();
    await fs.promises.rm(part, { force: true });
    throw err;
  }
  await out.close();
  await fs.promises.rename(part, file);
  return bytes;
}

/**
 * Streams the bundle in `file` to Import, in pieces of 1 MiB. `tenant` (operators only) stores the
 * blocks under that tenant instead of the caller's.
 */
export async function importBundleFromFile(
  client: KvparkClient,
  file: string,
  options: CallOptions & { tenant?: string } = {},
): Promise<ImportResponse> {
  const { tenant = "", ...callOptions } = options;
  async function* requests(): AsyncGenerator<MessageInitShape<typeof ImportRequestSchema>> {
    let first = true;
    for await (const data of fs.createReadStream(file, { highWaterMark: IMPORT_PIECE_BYTES })) {
      yield { data: data as Buffer, tenant: first ? tenant : "" };
      first = false;
    }
    if (first) yield { data: new Uint8Array(0), tenant };
  }
  return client.kvBlocks.import(requests(), callOptions);
}
