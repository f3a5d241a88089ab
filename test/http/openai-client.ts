// What the OpenAI API's tests share: a client of a test server, and the agent's tools in OpenAI's shape.
import OpenAI from "openai";
import type { ChatCompletionFunctionTool } from "openai/resources/chat/completions";
import { AGENT_TOOLS } from "../../bench/sections/agent";
import type { ServerProcess } from "../helpers/server";

export const TOKEN = "openai-tenant-token-0001";

/** The official client, pointed at a test server's /v1; no retries, so every status reaches the test. */
export function openAiClient(server: ServerProcess, apiKey = TOKEN): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });
}

/** The scripted agent's tools (bench/sections/agent.ts), as OpenAI's function tools. */
export const OPENAI_AGENT_TOOLS: ChatCompletionFunctionTool[] = AGENT_TOOLS.map((t) => ({
  type: "function",
  function: { name: t.name!, description: t.description!, parameters: JSON.parse(t.parametersJson!) },
}));
