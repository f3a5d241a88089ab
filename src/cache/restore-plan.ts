import type { ModelShape } from "./block-codec";
import type { BlockEntry } from "./block-index";
import type { RamBlock } from "./ram-tier";
import type { MatchTier, MatchedBlock } from "./reports";

/** One block of a restore's plan, with where it is read from. */
export interface PlanStep {
  block: MatchedBlock;
  /** The index's entry; null for a block of the shared tier, which this node does not hold. */
  entry: BlockEntry | null;
  ram: RamBlock | null;
}

/** Where a step of the plan is read from. */
export function stepTier(step: PlanStep): MatchTier {
  return step.ram ? "ram" : step.block.tier === "shared" ? "shared" : "ssd";
}

/**
 * For an import ending at position e, the first position whose rows a sliding-window layer
 * needs; rows before it are skipped (left as zeros, masked). A restore can stop early only at
 * the start of an SSD block (gone or failing verification), so the earliest position a
 * sequence restored through e may continue from is the first SSD block's start at or after e,
 * or the plan's end; a query there or later sees keys back to W - 1 positions before it. Rows
 * older than that W are needed by no stop point and no later token. -Infinity: keep every row.
 */
export function slidingKeepFrom(model: ModelShape, plan: PlanStep[]): (end: number) => number {
  const window = model.slidingWindow;
  if (!window || !model.layerTypes?.includes("sliding_attention")) return () => -Infinity;
  const risks: number[] = [];
  let position = 0;
  for (const step of plan) {
    if (!step.ram) risks.push(position);
    position += step.block.tokens;
  }
  const planEnd = position;
  return (end) => (risks.find((r) => r >= end) ?? planEnd) - window;
}

/** Consecutive steps in batches of at most `max` bytes each (a larger step makes a batch of its own). */
export function byteBatches(run: PlanStep[], bytesOf: (step: PlanStep) => number, max: number): PlanStep[][] {
  const batches: PlanStep[][] = [];
  let bytes = Infinity;
  for (const step of run) {
    const stepBytes = bytesOf(step);
    if (bytes + stepBytes > max) {
      batches.push([]);
      bytes = 0;
    }
    batches[batches.length - 1].push(step);
    bytes += stepBytes;
  }
  return batches;
}
