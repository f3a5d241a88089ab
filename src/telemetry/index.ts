export { startTelemetry, telemetryPlan, type TelemetryOverrides, type TelemetryPlan } from "./sdk.js";
export { Telemetry, GenerationTrace, type GenerationStart } from "./telemetry.js";
export { rpcSpanKey, GetBlocksTrace, traceLookup, tracePutBlocks, tracePin, traceUnpin } from "./rpc-span.js";
