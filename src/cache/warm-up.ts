import { core as mx } from "@frost-beta/mlx";
import { isSnapshot, type LayerBlock } from "../model/kv-cache";
import { type ModelCache } from "../model/model-cache";
import { encodeHeader, type TensorSpec } from "../util/safetensors";
import type { BlockEntry } from "./block-index";
import type { BlockPayloads } from "./payloads";
import type { Staging } from "./staging";

/**
 * Runs the persist and restore paths' MLX operations once, before a new engine reports ready: the
 * KV of a throwaway sequence (`from`) is exported, saved to the staging file and loaded back as a
 * restore stages it, and imported into a fresh sequence (`into`) in two parts, the first building
 * each layer's buffer and the second writing into it, with the recurrent layers' state. The code
 * each of these runs (MLX's kernels, this process's first large allocations) is otherwise faulted
 * in by the first request after a start.
 */
export function warmUpRestore(staging: Staging, from: ModelCache, into: ModelCache): void {
  const end = from.offset;
  const half = end >> 1;
  if (half === 0) return;
  const parts = [from.export(0, half), from.export(half, end)];
  const arrays: Record<string, mx.array> = {};
  parts.forEach((layers, p) =>
    layers.forEach((layer, i) => {
      if (isSnapshot(layer)) {
        if (p === 1) Object.assign(arrays, { [`${i}.conv`]: layer.conv, [`${i}.delta`]: layer.delta });
      } else Object.assign(arrays, { [`${p}.${i}.keys`]: layer.keys, [`${p}.${i}.values`]: layer.values });
    }),
  );
  // Out through mx.saveSafetensors as the SSD encoder does, in again through writev and mx.load.
  const { bytes, file } = staging.arraysToBytes(arrays);
  const specs: TensorSpec[] = [];
  const pieces: Buffer[] = [];
  for (const [name, t] of file.tensors) {
    specs.push({ name, dtype: "F32", shape: t.shape, byteLength: t.end - t.begin });
    pieces.push(bytes.subarray(file.dataOffset + t.begin, file.dataOffset + t.end));
  }
  const loaded = staging.bytesToArrays(encodeHeader(specs, {}), pieces);
  const layersOf = (p: number): (LayerBlock | null)[] =>
    parts[p].map((layer, i) =>
      isSnapshot(layer)
        ? { conv: loaded[`${i}.conv`], delta: loaded[`${i}.delta`] }
        : { keys: loaded[`${p}.${i}.keys`], values: loaded[`${p}.${i}.values`] },
    );
  into.import(0, layersOf(0), half);
  into.import(half, layersOf(1), end);
  into.importRecurrent(layersOf(1));
}

/**
 * Checks one block as a restore checks each block it reads from SSD (envelope, payload header,
 * index entry), `runs` times, so that a restore after a start does not run that code cold: right
 * after a restart with the page cache dropped, checking 128 blocks took 90-121 ms against 34 warm.
 */
export function warmUpVerify(payloads: BlockPayloads, from: ModelCache, runs = 64): void {
  const tokens = from.offset;
  if (tokens === 0) return;
  const root = Buffer.alloc(32, 1);
  const key = Buffer.alloc(32, 2);
  const tokenIds = Uint32Array.from({ length: tokens }, (_, i) => i);
  const [stored] = payloads.payloadsFromLayers(
    [{ record: { key, parent: root, root, tokenIds, storedBytes: 0 }, layers: from.export(0, tokens) }],
    true,
  );
  const entry: BlockEntry = {
    key,
    keyHex: key.toString("hex"),
    parentHex: root.toString("hex"),
    rootHex: root.toString("hex"),
    tokenIds,
    bytes: 0,
    ssd: "stored",
    sightings: 0,
    usedAtMs: 0,
  };
  for (let i = 0; i < runs; i++) {
    const checked = payloads.checkStored(entry, stored);
    if (checked instanceof Error) throw checked;
  }
}

/**
 * Evaluates, then drops, buffers shaped like the tensors a whole-layer restore loads (`specs`): the
 * allocator keeps their pages (src/engine/allocator.ts) for the first restore's mx.load, which
 * otherwise pays a page fault per 4 KiB (about 80 ms for 216 MB here).
 */
export function prefault(specs: readonly TensorSpec[]): void {
  mx.eval(...specs.map((t) => mx.zeros(t.shape, mx.float32)));
}
