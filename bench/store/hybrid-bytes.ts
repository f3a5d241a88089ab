// SSD bytes per cached token by block size, for the hybrid presets beside a full-attention one.
//
// A block of a model with recurrent layers (qwen3_5) holds its attention layers' KV and one
// snapshot of every recurrent layer's state, whatever its length; sliding-window layers (gemma3_text)
// are stored whole. So bytes per cached token = KV per token + snapshot / blockTokens. This persists
// a synthetic sequence of each preset's shape (random KV and states, no forward pass: the bytes do
// not depend on the values) through the real cache into a real SSD tier, one block size at a time,
// and reads the store's bytes back.
//
// Usage: npx tsc -p tsconfig.json && node --expose-gc dist/bench/store/hybrid-bytes.js [--tokens 1024]
//          [--out bench/results/hybrid/bytes.json]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache } from "../../src/cache";
import { blockDataBytes, type ModelShape } from "../../src/cache/block-codec";
import { parseModelConfig } from "../../src/model/config";
import { ModelCache } from "../../src/model/model-cache";
import { PRESETS } from "../../src/model-gen/presets";

const PRESET_NAMES = ["qwen2.5-0.5b", "gemma3-1b", "qwen3.5-0.8b"];
const BLOCK_SIZES = [16, 32, 64, 128, 256, 512, 1024];

function shapeOf(preset: string): ModelShape {
  const p = PRESETS[preset];
  const c = parseModelConfig({ ...p.config, vocab_size: p.vocabSize ?? p.tokenizerVocabSize + 16 });
  const recurrentLayers = c.layerTypes.filter((t) => t === "linear_attention").length;
  const la = c.linearAttention;
  return {
    fingerprint: `bench-${preset}`,
    numLayers: c.numHiddenLayers,
    kvHeads: c.numKeyValueHeads,
    headDim: c.headDim,
    layerTypes: c.layerTypes,
    slidingWindow: c.slidingWindow,
    recurrentShape:
      la && recurrentLayers > 0
        ? {
            conv: [
              la.convKernel - 1,
              2 * la.numKeyHeads * la.keyHeadDim + la.numValueHeads * la.valueHeadDim,
            ],
            delta: [la.numValueHeads, la.valueHeadDim, la.keyHeadDim],
          }
        : null,
  };
}

/** A sequence of `tokens` positions of the model's shape, with a recurrent snapshot at every block end. */
function syntheticSequence(model: ModelShape, tokens: number, blockTokens: number): ModelCache {
  const recurrent = (model.layerTypes ?? []).flatMap((t, i) => (t === "linear_attention" ? [i] : []));
  const kv = new ModelCache(model.numLayers, model.kvHeads, model.headDim, 256, recurrent);
  const ranges = kv.layers.map((_, i) =>
    recurrent.includes(i)
      ? null
      : {
          keys: mx.random.normal([1, model.kvHeads, tokens, model.headDim]),
          values: mx.random.normal([1, model.kvHeads, tokens, model.headDim]),
        },
  );
  kv.import(0, ranges, tokens);
  if (model.recurrentShape) {
    // One state shared by every boundary: the bytes written are the same, the memory is not.
    const conv = mx.random.normal([1, ...model.recurrentShape.conv]);
    const delta = mx.random.normal([1, ...model.recurrentShape.delta]);
    mx.eval(conv, delta);
    for (const r of kv.recurrent) {
      if (!r) continue;
      r.conv = conv;
      r.delta = delta;
      r.position = tokens;
      for (let end = blockTokens; end < tokens; end += blockTokens) r.snapshots.set(end, { conv, delta });
    }
  }
  return kv;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opt = (name: string, fallback: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : fallback;
  };
  const tokens = Number(opt("--tokens", "1024"));
  const out = opt("--out", "bench/results/hybrid/bytes.json");
  const rows: Record<string, unknown>[] = [];
  for (const preset of PRESET_NAMES) {
    const model = shapeOf(preset);
    for (const blockTokens of BLOCK_SIZES) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-hybrid-bytes-"));
      const cache = await PrefixCache.open(model, {
        ssdDir: path.join(dir, "ssd"),
        stagingDir: path.join(dir, "staging"),
        blockTokens,
        ssdFsync: "none",
        ramBytesMax: 64 * 1024 ** 3,
        ssdBytesMax: 64 * 1024 ** 3,
        writeQueueBytesMax: 16 * 1024 ** 3,
        writeQueueBlocksMax: 100_000,
      });
      try {
        const kv = syntheticSequence(model, tokens, blockTokens);
        const ids = Array.from({ length: tokens }, (_, i) => 1 + (i % 1000));
        const report = cache.persist("bench", ids, kv);
        await cache.flush();
        const stats = cache.stats();
        const ssdBytes = Number(stats.ssd?.bytes ?? 0);
        const blocks = Math.ceil(tokens / blockTokens);
        if (report.queuedToSsd !== blocks)
          throw new Error(`${preset} B=${blockTokens}: ${report.queuedToSsd} of ${blocks} queued`);
        rows.push({
          preset,
          blockTokens,
          tokens,
          blocks,
          ssdBytes,
          ssdBytesPerToken: ssdBytes / tokens,
          dataBytesPerToken: (blockDataBytes(model, blockTokens) * (tokens / blockTokens)) / tokens,
        });
        console.error(
          `${preset} B=${blockTokens}: ${(ssdBytes / tokens).toFixed(0)} SSD bytes per cached token`,
        );
      } finally {
        await cache.close();
        fs.rmSync(dir, { recursive: true, force: true });
        global.gc?.();
      }
    }
  }
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify({ tokens, rows }, null, 2) + "\n");
  const header = `| preset | ${BLOCK_SIZES.map((b) => `B = ${b}`).join(" | ")} |`;
  const lines = [header, `| --- | ${BLOCK_SIZES.map(() => "---:").join(" | ")} |`];
  for (const preset of PRESET_NAMES) {
    const cells = BLOCK_SIZES.map((b) => {
      const r = rows.find((x) => x.preset === preset && x.blockTokens === b)!;
      return Math.round(r.ssdBytesPerToken as number).toLocaleString("en-US");
    });
    lines.push(`| \`${preset}\` | ${cells.join(" | ")} |`);
  }
  console.log(lines.join("\n"));
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
