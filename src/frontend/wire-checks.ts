// Checks of what arrives on the wire before connect-node reads it, where connect-node's own answers
// are not the ones kvpark promises: a request message that is not valid protobuf (connect-node says
// INTERNAL; the JSON codec already says INVALID_ARGUMENT), an envelope whose flags byte carries bits
// no protocol defines for requests (connect-node ignores them, or skips the message for gRPC-Web),
// and a path that names no method (connect-node answers a bare HTTP 404).
import type * as http2 from "node:http2";
import { fromBinary, type DescMessage, type DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { compressionBrotli, compressionGzip, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Compression, UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";
import { parseContentType as parseConnect } from "@connectrpc/connect/protocol-connect";
import { parseContentType as parseGrpc } from "@connectrpc/connect/protocol-grpc";
import { parseContentType as parseGrpcWeb } from "@connectrpc/connect/protocol-grpc-web";
import type { Logger } from "../log.js";
import { quoted } from "../rpc/validation.js";

/** The request encodings the adapter accepts (its defaults), for decoding compressed messages here too. */
const COMPRESSIONS: Compression[] = [compressionGzip, compressionBrotli];

/** How a request's body carries its message(s). */
interface Wire {
  /** Length-prefixed messages (gRPC, gRPC-Web, Connect streaming) or one bare message (Connect unary). */
  enveloped: boolean;
  /** Protobuf binary; the JSON codecs already report a bad message as INVALID_ARGUMENT. */
  binary: boolean;
  /** The request's message compression; undefined when identity or unknown to kvpark. */
  compression?: Compression;
}

function wireOf(req: UniversalServerRequest): Wire | undefined {
  const type = req.header.get("content-type") ?? "";
  const codec = (name: string) => {
    const value = req.header.get(name);
    return value ? COMPRESSIONS.find((c) => c.name === value.toLowerCase()) : undefined;
  };
  const web = parseGrpcWeb(type);
  // grpc-web-text bodies are base64; connect-node refuses them before reading any message.
  if (web)
    return web.text
      ? undefined
      : { enveloped: true, binary: web.binary, compression: codec("grpc-encoding") };
  const grpc = parseGrpc(type);
  if (grpc) return { enveloped: true, binary: grpc.binary, compression: codec("grpc-encoding") };
  const connect = parseConnect(type);
  if (!connect || req.method !== "POST") return undefined;
  return connect.stream
    ? { enveloped: true, binary: connect.binary, compression: codec("connect-content-encoding") }
    : { enveloped: false, binary: connect.binary, compression: codec("content-encoding") };
}

function concat(parts: Uint8Array[], bytes: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(bytes);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** Refuses a message that does not decode as the method's input, as INVALID_ARGUMENT. */
async function checkMessage(
  schema: DescMessage,
  data: Uint8Array,
  compressed: boolean,
  wire: Wire,
  readMaxBytes: number,
  name: string,
): Promise<void> {
  if (compressed) {
    // Without a known encoding connect-node refuses the message itself; a failed decompression
    // fails there the same way.
    if (!wire.compression) return;
    try {
      data = await wire.compression.decompress(data, readMaxBytes);
    } catch {
      return;
    }
  }
  try {
    fromBinary(schema, data);
  } catch (err) {
    throw new ConnectError(
      `${name}: not a valid ${schema.typeName}: ${(err as Error).message}`,
      Code.InvalidArgument,
    );
  }
}

/**
 * Passes a request body through unchanged while following its envelopes: a flags byte other than 0
 * or 1 (compressed) fails the call, and each binary message is decoded once before connect-node sees
 * its last byte, so that a malformed one fails the call with INVALID_ARGUMENT.
 */
async function* checkedEnvelopes(
  body: AsyncIterable<Uint8Array>,
  method: DescMethod,
  wire: Wire,
  readMaxBytes: number,
): AsyncGenerator<Uint8Array> {
  const schema = method.input;
  const streamed = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
  const name = (i: number) => (streamed ? `requests[${i}]` : "request");
  const header = new Uint8Array(5);
  let headerBytes = 0;
  let index = 0;
  let flags = 0;
  let remaining = -1; // bytes of the current message still to come; -1 while reading a header
  let keep = false; // whether the current message is collected for decoding
  let parts: Uint8Array[] = [];
  let length = 0;
  const finish = async () => {
    if (keep)
      await checkMessage(schema, concat(parts, length), (flags & 1) === 1, wire, readMaxBytes, name(index));
    parts = [];
    index++;
    remaining = -1;
    headerBytes = 0;
  };
  for await (const chunk of body) {
    let at = 0;
    while (at < chunk.byteLength) {
      if (remaining < 0) {
        const n = Math.min(5 - headerBytes, chunk.byteLength - at);
        header.set(chunk.subarray(at, at + n), headerBytes);
        headerBytes += n;
        at += n;
        if (headerBytes < 5) continue;
        flags = header[0];
        if ((flags & ~1) !== 0) {
          // gRPC defines 0 and 1 only; gRPC-Web's 0x80 and Connect's 0x02 mark trailers and the end
          // of a response stream, which requests never carry; other bits are reserved.
          throw new ConnectError(
            `protocol error: ${name(index)} has envelope flags 0x${flags.toString(16).padStart(2, "0")}; a request message's flags byte is 0, or 1 when compressed`,
            Code.Internal,
          );
        }
        length = new DataView(header.buffer).getUint32(1);
        remaining = length;
        // A message over the limit is refused by connect-node (RESOURCE_EXHAUSTED) before it is read.
        keep = wire.binary && length <= readMaxBytes;
        if (remaining === 0) await finish();
      } else {
        const n = Math.min(remaining, chunk.byteLength - at);
        if (keep) parts.push(chunk.subarray(at, at + n));
        remaining -= n;
        at += n;
        if (remaining === 0) await finish();
      }
    }
    yield chunk;
  }
}

/** A Connect unary body: one bare message, decoded once when it is complete. */
async function* checkedUnary(
  body: AsyncIterable<Uint8Array>,
  schema: DescMessage,
  wire: Wire,
  readMaxBytes: number,
): AsyncGenerator<Uint8Array> {
  const parts: Uint8Array[] = [];
  let length = 0;
  let last: Uint8Array | undefined;
  for await (const chunk of body) {
    // Held back one chunk, so that the message is checked before connect-node has all of it.
    if (last) yield last;
    last = chunk;
    length += chunk.byteLength;
    if (length <= readMaxBytes) parts.push(chunk);
  }
  if (length > 0 && length <= readMaxBytes) {
    await checkMessage(
      schema,
      concat(parts, length),
      wire.compression !== undefined,
      wire,
      readMaxBytes,
      "request",
    );
  }
  if (last) yield last;
}

function checked(handler: UniversalHandler, readMaxBytes: number): UniversalHandler {
  const fn = (req: UniversalServerRequest) => {
    const wire = wireOf(req);
    const body = req.body;
    if (!wire || typeof body !== "object" || body === null || !(Symbol.asyncIterator in body))
      return handler(req);
    const bytes = body as AsyncIterable<Uint8Array>;
    if (!wire.enveloped && !wire.binary) return handler(req);
    return handler({
      ...req,
      body: wire.enveloped
        ? checkedEnvelopes(bytes, handler.method, wire, readMaxBytes)
        : checkedUnary(bytes, handler.method.input, wire, readMaxBytes),
    });
  };
  return Object.assign(fn, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

/** Puts the wire checks in front of every handler registered on `router` so far. */
export function checkRequestWire(router: ConnectRouter, readMaxBytes: number): void {
  const handlers = router.handlers as UniversalHandler[];
  for (let i = 0; i < handlers.length; i++) handlers[i] = checked(handlers[i], readMaxBytes);
}

type NodeHandler = NonNullable<ConnectNodeAdapterOptions["fallback"]>;

/** grpc-message's encoding: UTF-8, with bytes outside printable ASCII and "%" percent-encoded. */
function percentEncoded(text: string): string {
  let out = "";
  for (const b of Buffer.from(text, "utf8"))
    out +=
      b >= 0x20 && b <= 0x7e && b !== 0x25
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  return out;
}

/**
 * Answers a path that names no method: UNIMPLEMENTED in the protocol the request speaks, as the gRPC
 * specification lists "method not found" under UNIMPLEMENTED. gRPC gets HTTP 200 with grpc-status 12
 * in the trailers (as connect-node sends its own errors, which every gRPC client reads); gRPC-Web
 * gets it in the headers, its trailers-only form, which browsers can read. Connect gets HTTP 404 with
 * its error JSON: the Connect specification maps 404 to `unimplemented` for clients that read only
 * the status (its streaming clients do), so status and body agree. Anything else gets a bare 404.
 */
export function unknownMethod(log: Logger): NodeHandler {
  return (req, res) => {
    const path = (req.url ?? "").split("?", 1)[0];
    const name = quoted(path.replace(/^\//, ""));
    const message = `unknown method ${name}; server reflection lists the methods this server serves`;
    const type = String(req.headers["content-type"] ?? "");
    const status = { "grpc-status": String(Code.Unimplemented), "grpc-message": percentEncoded(message) };
    let protocol: "grpc" | "grpc_web" | "connect" | undefined;
    if (parseGrpcWeb(type)) protocol = "grpc_web";
    else if (parseGrpc(type)) protocol = "grpc";
    else if (
      parseConnect(type) ||
      req.headers["connect-protocol-version"] !== undefined ||
      (req.method === "GET" && /[?&]connect=v1(&|$)/.test(req.url ?? ""))
    )
      protocol = "connect";
    if (protocol) log.info({ event: "rpc", method: name, protocol, code: "Unimplemented" }, "request failed");
    // The request body is not read; let it drain so an HTTP/1.1 connection stays usable.
    req.resume();
    const writeHead = res.writeHead as (status: number, headers: http2.OutgoingHttpHeaders) => unknown;
    if (protocol === "grpc") {
      writeHead.call(res, 200, { "content-type": type });
      res.addTrailers(status);
      res.end();
    } else if (protocol === "grpc_web") {
      writeHead.call(res, 200, { "content-type": type, ...status });
      res.end();
    } else if (protocol === "connect") {
      writeHead.call(res, 404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "unimplemented", message }));
    } else {
      writeHead.call(res, 404, {});
      res.end();
    }
  };
}
