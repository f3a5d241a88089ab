// kvpark's public API for Node programs: the typed client and the generated message types.
export {
  createKvparkClient,
  retryInterceptor,
  type KvparkClient,
  type KvparkClientOptions,
} from "./client.js";
export * from "../gen/kvpark/v1/common_pb.js";
export * from "../gen/kvpark/v1/inference_pb.js";
export * from "../gen/kvpark/v1/kvblocks_pb.js";
