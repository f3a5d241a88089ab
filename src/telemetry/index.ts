export { startTelemetry, telemetryPlan, type TelemetryOverrides, type TelemetryPlan } from "./sdk.js";
export { Telemetry } from "./telemetry.js";
export { rpcSpanKey } from "./rpc-span.js";
export {
  GenerationTrace,
  type GenerationStart,
  GetBlocksTrace,
  traceLookup,
  tracePutBlocks,
  tracePin,
  traceUnpin,
} from "./traces.js";
