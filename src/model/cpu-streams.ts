import * as os from "node:os";
import { core as mx } from "@frost-beta/mlx";

let streams: mx.Stream[] | undefined;

/**
 * Two CPU streams where there are two cores or more (none otherwise). MLX runs each stream's work
 * on a thread of its own, so independent work split between them uses both cores: attention's
 * elementwise parts (attention.ts) and a restore's copies into the layers (ModelCache.import).
 */
export function cpuStreams(): mx.Stream[] {
  streams ??= os.availableParallelism() > 1 ? [mx.newStream(mx.cpu), mx.newStream(mx.cpu)] : [];
  return streams;
}
