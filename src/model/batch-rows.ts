import { core as mx } from "@frost-beta/mlx";

/**
 * Batch invariance of the matrix products.
 *
 * A batched decode step runs one sequence's row beside others' through the same product, so the row
 * count of every matmul depends on what else is running. BLAS chooses its kernel by shape, row count
 * included, and kernels sum in different orders: measured on this CPU backend (OpenBLAS), a row of
 * x W^T with W 896x896 differs in its last bits between 1 row and 2 or more, and with W 128x896
 * between up to 8 rows and 9 or more, while the 4864x896, 896x4864 and 151936x896 products give the
 * same bits at every row count. Which counts agree depends on the machine.
 *
 * So kvpark measures it when a model loads: for each distinct product (weight shape and bias), it
 * runs random rows at power-of-two row counts up to the largest batch and keeps the counts whose
 * rows equal, to the bit, those of the largest count. A product is then always run at a trusted
 * count, any other count being padded with zero rows (a row's result depends only on its own input,
 * so padding changes nothing but the kernel). Row counts beyond the largest batch (prefill chunks)
 * run as they are: a chunk's size depends only on its prompt, never on other requests.
 */

/** Maps a product's row count to the count it runs at. */
export interface RowPlan {
  padTo(rows: number): number;
}

/** Runs every row count as it is (before calibration, and for products that need no padding). */
export const IDENTITY_ROWS: RowPlan = { padTo: (rows) => rows };

/** A plan from the trusted power-of-two counts up to `largest`. */
export class TrustedRows implements RowPlan {
  constructor(
    /** Trusted counts, ascending; the last is the largest batch. */
    readonly trusted: number[],
  ) {}

  get largest(): number {
    return this.trusted[this.trusted.length - 1];
  }

  padTo(rows: number): number {
    if (rows > this.largest) return rows;
    return this.trusted.find((t) => t >= rows)!;
  }
}

/** Runs `product` over x [..., rows, k], padded to the plan's row count; returns [..., rows, n]. */
export function withPaddedRows(x: mx.array, plan: RowPlan, product: (x: mx.array) => mx.array): mx.array {
  const axis = x.ndim - 2;
  const rows = x.shape[axis];
  const padded = plan.padTo(rows);
  if (padded === rows) return product(x);
  const padShape = [...x.shape];
  padShape[axis] = padded - rows;
  const y = product(mx.concatenate([x, mx.zeros(padShape, x.dtype)], axis));
  const index = y.shape.map((_, i) => (i === axis ? mx.Slice(0, rows) : mx.Slice()));
  return y.index(...index);
}

/** A module computing x W^T (+ b) whose row counts a plan decides. */
export interface RowProduct {
  readonly weight: mx.array;
  readonly bias?: mx.array;
  /** The product itself, at the row count it is given. */
  product(x: mx.array): mx.array;
  set rowPlan(plan: RowPlan);
}

/** What calibration found for one distinct product. */
export interface RowCalibration {
  /** "outputs x inputs", with "+bias" when it has one. */
  product: string;
  /** How many modules share it. */
  modules: number;
  /** Row counts whose rows agree to the bit with the largest batch's. */
  trusted: number[];
}

/** Powers of two from 1 up to the first one at or above `rows`. */
export function rowBuckets(rows: number): number[] {
  const buckets = [1];
  while (buckets[buckets.length - 1] < rows) buckets.push(buckets[buckets.length - 1] * 2);
  return buckets;
}

/**
 * Measures, for each distinct product among `modules`, which row counts up to `maxRows` agree with
 * the largest, and gives each module its plan. Deterministic inputs; the weights are the model's.
 */
export function calibrateRows(modules: RowProduct[], maxRows: number): RowCalibration[] {
  const groups = new Map<string, RowProduct[]>();
  for (const m of modules) {
    const [n, k] = m.weight.shape;
    const name = `${n}x${k}${m.bias ? "+bias" : ""}`;
    groups.set(name, [...(groups.get(name) ?? []), m]);
  }
  const buckets = rowBuckets(maxRows);
  const largest = buckets[buckets.length - 1];
  const report: RowCalibration[] = [];
  for (const [name, members] of groups) {
    const probe = members[0];
    const k = probe.weight.shape[1];
    const x = mx.random.normal([1, largest, k], mx.float32, 0, 1, mx.random.key(largest * 7919 + k));
    const reference = probe.product(x);
    mx.eval(reference);
    const trusted = buckets.filter((b) => {
      if (b === largest) return true;
      const rows = mx.Slice(0, b);
      const y = probe.product(x.index(mx.Slice(), rows, mx.Slice()));
      return mx.arrayEqual(y, reference.index(mx.Slice(), rows, mx.Slice())).item() as boolean;
    });
    const plan = new TrustedRows(trusted);
    for (const m of members) m.rowPlan = plan;
    report.push({ product: name, modules: members.length, trusted });
  }
  return report;
}
