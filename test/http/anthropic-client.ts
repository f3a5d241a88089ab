// What the Anthropic API's suites share: the token they authenticate with, the official client
// pointed at a test server, the agent's tools in Anthropic's shape, and gRPC calls as the same tenant.
import Anthropic from "@anthropic-ai/sdk";
import * as grpc from "@grpc/grpc-js";
import type { DescService } from "@bufbuild/protobuf";
import { AGENT_TOOLS } from "../../bench/sections/agent";
import { grpcJsClient, unary } from "../helpers/grpcjs";
import type { ServerProcess } from "../helpers/server";

/** The tenant token the suites' servers are started with (--auth-tokens anthropic=TOKEN). */
export const TOKEN = "anthropic-test-token-0123456789";

/** The official client, retries off so that every error is the server's first answer. */
export function anthropicClient(server: ServerProcess, options: { apiKey?: string } = {}): Anthropic {
  return new Anthropic({ baseURL: server.url, apiKey: options.apiKey ?? TOKEN, maxRetries: 0 });
}

/** The agent's tools (bench/sections/agent.ts) as Anthropic declares tools. */
export const ANTHROPIC_AGENT_TOOLS: Anthropic.Tool[] = AGENT_TOOLS.map((t) => ({
  name: t.name!,
  description: t.description,
  input_schema: JSON.parse(t.parametersJson!) as Anthropic.Tool.InputSchema,
}));

/** Calls a unary gRPC method of `service` on the server as the suites' tenant. */
export async function grpcCall<T>(
  server: ServerProcess,
  service: DescService,
  method: string,
  req: unknown,
  token = TOKEN,
): Promise<T> {
  const client = grpcJsClient(service, `127.0.0.1:${server.port}`);
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  try {
    return await unary<T>(client, method, req, { metadata });
  } finally {
    client.close();
  }
}

/** The error a call fails with. */
export async function failure(
  call: () => Promise<unknown>,
): Promise<InstanceType<typeof Anthropic.APIError>> {
  try {
    await call();
  } catch (err) {
    expect(err).toBeInstanceOf(Anthropic.APIError);
    return err as InstanceType<typeof Anthropic.APIError>;
  }
  throw new Error("the call succeeded");
}
