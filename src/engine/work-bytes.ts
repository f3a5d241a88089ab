import type { LoadedModel } from "../model/loader.js";

// The engine's estimates of the MLX temporaries a step leaves until they are collected: MLX frees
// an array only when its JS wrapper is collected, so the engine's memory budget and its collections
// (Engine.collect) count them.

/**
 * Bytes one prefill chunk's temporaries may hold before they are collected: per layer, the
 * activations MLX keeps while their JS wrappers live (MLP and attention inputs and outputs), the
 * attention scores of one layer over the longest context, and the recurrent layers' per-token states.
 */
export function stepWorkBytes(model: LoadedModel, chunk: number): number {
  const c = model.config;
  const perLayer = chunk * (3 * c.intermediateSize + 12 * c.hiddenSize) * 4;
  const scores = chunk * c.numAttentionHeads * c.maxPositionEmbeddings * 4;
  const recurrent = chunk * recurrentLayerBytes(model) * RECURRENT_PREFILL_STATES_PER_TOKEN;
  return model.numLayers * perLayer + scores + chunk * c.vocabSize * 4 + recurrent;
}

/**
 * A prefill chunk's temporaries in the recurrent layers, in state matrices per token and layer.
 * The chunked delta rule keeps a few state-sized products per 16-token chunk, and the convolution
 * and projections the rest. Measured: the qwen3.5-0.8b shape (18 layers of 1 MiB states) grew RSS
 * by 14.1 MB per prompt token in 128- to 512-token chunks, 2.2 MB of it the activations perLayer
 * counts, so about 0.66 states per token and layer.
 */
const RECURRENT_PREFILL_STATES_PER_TOKEN = 0.75;

/** Bytes of one state of every recurrent layer (qwen3_5's Gated DeltaNet delta-rule states). */
function recurrentLayerBytes(model: LoadedModel): number {
  const shape = model.recurrentShape;
  return shape ? model.recurrentLayers.length * shape.delta.reduce((a, b) => a * b, 4) : 0;
}

/**
 * Estimated temporaries of one decode step of `rows` sequences (activations and logits); a decode
 * step runs the delta rule's step form, which leaves the decayed state, the update and the new
 * state per recurrent layer.
 */
export function decodeGarbageBytes(model: LoadedModel, rows: number): number {
  const c = model.config;
  const perRow = (model.numLayers * (3 * c.intermediateSize + 12 * c.hiddenSize) + 3 * c.vocabSize) * 4;
  return rows * (perRow + 3 * recurrentLayerBytes(model));
}
