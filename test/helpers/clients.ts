import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import type { ServerProcess } from "./server";

/** Connect clients of a test server's Inference and KVBlocks services, with a bearer token if given. */
export function kvparkClients(server: ServerProcess, token?: string) {
  const transport = createGrpcTransport({
    baseUrl: server.url,
    interceptors: token
      ? [
          (next) => (req) => {
            req.header.set("authorization", `Bearer ${token}`);
            return next(req);
          },
        ]
      : [],
  });
  return {
    inference: createClient(InferenceService, transport),
    kv: createClient(KVBlocksService, transport),
  };
}
