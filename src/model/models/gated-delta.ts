import { core as mx } from "@frost-beta/mlx";

/**
 * The gated delta rule (Gated DeltaNet's recurrence) over one segment of tokens, per value head:
 *   S_t = g_t S_{t-1} + beta_t (v_t - g_t S_{t-1} k_t) k_t^T,   y_t = S_t q_t,
 * with S [Dv, Dk]. Two forms that give the same result up to float32 rounding:
 *
 * - the step form (`deltaStep`), one compiled step per token: what decode runs, and short segments;
 * - the chunked (WY) form (`chunkedDeltaRule`), after flash-linear-attention's
 *   `chunk_gated_delta_rule`: the segment is cut into chunks of C tokens; inside a chunk, with G_t
 *   the decay accumulated since the chunk began (kept in log space) and S_0 the state entering it,
 *     delta_t = beta_t (v_t - G_t S_0 k_t - sum_{s<t} (G_t / G_s) (k_t . k_s) delta_s),
 *   a unit lower-triangular system (I + A) Delta = beta V - beta G K S_0^T, solved as
 *   T = (I + A)^-1 by forward substitution (all chunks at once), so Delta = U - W S_0^T with
 *   U = T beta V and W = T beta G K. Then
 *     Y = G Q S_0^T + ((G_t / G_s) (q_t . k_s))_{s<=t} Delta,
 *     S_C = G_C S_0 + Delta^T ((G_C / G_s) k_s)_s,
 *   so only the state update runs chunk after chunk; everything else is batched matrix products.
 *
 * Chunks are laid on absolute positions (multiples of C from position 0), so a segment starting
 * mid-chunk is padded in front, and one ending mid-chunk behind, with tokens that change nothing
 * (k = q = v = 0, beta = 0, decay 1). With C dividing the block size, every block boundary inside
 * a segment is a chunk end, where the state is exact and can be captured.
 */

/** Chunk length of the chunked form. Measured in bench/model/gated-delta.ts. */
export const DELTA_CHUNK_TOKENS = 16;
/**
 * Segments shorter than this (decode's single tokens) run the step form. Measured in
 * bench/model/gated-delta.ts: the chunked form was as fast or faster from 2 tokens on.
 */
export const DELTA_CHUNKED_MIN_TOKENS = 2;

/** Which form `gatedDeltaRule` runs: "auto" (by length), or one form always (benchmarks, tests). */
export const deltaRuleForm: { mode: "auto" | "step" | "chunked" } = { mode: "auto" };

/** q/k [1, T, H, Dk], v [1, T, H, Dv], logDecay/beta [1, T, H]; state S [1, H, Dv, Dk]. */
export interface DeltaInputs {
  q: mx.array;
  k: mx.array;
  v: mx.array;
  /** log g_t, <= 0. */
  logDecay: mx.array;
  beta: mx.array;
}

/**
 * Runs the rule over a segment starting at absolute `position` from state `S`. `capture(i, S)` is
 * called with the state after the segment's token i (0-based) for every i < T - 1 where
 * `capturesAt(position + i + 1)`. Returns [y [1, T, H, Dv], state after the last token].
 */
export function gatedDeltaRule(
  inputs: DeltaInputs,
  S: mx.array,
  position: number,
  capturesAt: (position: number) => boolean,
  capture: (i: number, S: mx.array) => void,
  snapshotTokens = 0,
): [mx.array, mx.array] {
  const tokens = inputs.q.shape[1];
  const mode = deltaRuleForm.mode;
  const chunk = chunkTokensFor(snapshotTokens);
  const chunked = mode === "chunked" || (mode === "auto" && tokens >= DELTA_CHUNKED_MIN_TOKENS);
  if (chunked) return chunkedDeltaRule(inputs, S, position, chunk, capturesAt, capture);
  return steppedDeltaRule(inputs, S, position, capturesAt, capture);
}

/**
 * The chunk length: DELTA_CHUNK_TOKENS, or with a block size it does not divide, the largest
 * divisor of the block size below it, so chunk ends meet block ends.
 */
function chunkTokensFor(snapshotTokens: number): number {
  let c = DELTA_CHUNK_TOKENS;
  if (snapshotTokens > 0) while (snapshotTokens % c !== 0) c--;
  return c;
}

/** The step form, token by token. */
export function steppedDeltaRule(
  { q, k, v, logDecay, beta }: DeltaInputs,
  S: mx.array,
  position: number,
  capturesAt: (position: number) => boolean,
  capture: (i: number, S: mx.array) => void,
): [mx.array, mx.array] {
  const tokens = q.shape[1];
  const decay = mx.exp(logDecay);
  const ys: mx.array[] = [];
  const at = (t: mx.array, i: number) => t.index(mx.Slice(), i);
  for (let i = 0; i < tokens; i++) {
    const [y, next] = deltaStep(at(q, i), at(k, i), at(v, i), at(decay, i), at(beta, i), S);
    ys.push(y);
    S = next;
    if (i < tokens - 1 && capturesAt(position + i + 1)) capture(i, S);
  }
  return [ys.length === 1 ? mx.expandDims(ys[0], 1) : mx.stack(ys, 1), S];
}

/** The chunked form with chunks of `C` tokens on absolute positions; see the file's comment. */
export function chunkedDeltaRule(
  { q, k, v, logDecay, beta }: DeltaInputs,
  S0: mx.array,
  position: number,
  C: number,
  capturesAt: (position: number) => boolean,
  capture: (i: number, S: mx.array) => void,
): [mx.array, mx.array] {
  const tokens = q.shape[1];
  // A segment inside one chunk of the grid is one chunk of its own length: no padding, and no
  // chunk end inside it.
  if ((position % C) + tokens <= C) C = tokens;
  const front = position % C;
  const n = Math.ceil((front + tokens) / C);
  const back = n * C - front - tokens;
  // [1, T, H, D] -> padded [H, n, C, D]; [1, T, H] -> [H, n, C].
  const chunks = (t: mx.array) => {
    const padded =
      front || back
        ? mx.pad(t, [
            [0, 0],
            [front, back],
            [0, 0],
            [0, 0],
          ])
        : t;
    return padded.reshape(n, C, t.shape[2], t.shape[3]).transpose(2, 0, 1, 3);
  };
  const chunks3 = (t: mx.array) => chunks(mx.expandDims(t, 3)).squeeze(3);
  const Q = chunks(q);
  const K = chunks(k);
  const V = chunks(v);
  const B = chunks3(beta);
  const gc = mx.cumsum(chunks3(logDecay), 2); // log G_t, [H, n, C]
  const G = mx.exp(gc);

  // Decay ratios G_t / G_s for s <= t (row t, column s), zero above the diagonal; the exponent is
  // masked before exp so ratios that would overflow are never formed.
  const rows = mx.arange(C).reshape(C, 1);
  const cols = mx.arange(C).reshape(1, C);
  const lowerIncl = mx.greaterEqual(rows, cols);
  const strictLower = mx.greater(rows, cols);
  const diff = mx.subtract(mx.expandDims(gc, 3), mx.expandDims(gc, 2));
  const ratio = (mask: mx.array) => mx.where(mask, mx.exp(mx.where(mask, diff, 0)), 0);
  const Kt = K.transpose(0, 1, 3, 2);
  const A = mx.multiply(mx.multiply(mx.matmul(K, Kt), ratio(strictLower)), mx.expandDims(B, 3));
  const M = mx.multiply(mx.matmul(Q, Kt), ratio(lowerIncl));

  // T = (I + A)^-1 by forward substitution, row by row over every chunk at once:
  // T_i = e_i - A[i, :i] T[:i].
  const eye = mx.eye(C);
  const Trows: mx.array[] = [];
  for (let i = 0; i < C; i++) {
    const e = eye.index(mx.Slice(i, i + 1)); // [1, C]
    if (i === 0) {
      Trows.push(mx.broadcastTo(e, [A.shape[0], n, 1, C]));
      continue;
    }
    const a = A.index(mx.Slice(), mx.Slice(), mx.Slice(i, i + 1), mx.Slice(0, i)); // [H, n, 1, i]
    const above = Trows.length === 1 ? Trows[0] : mx.concatenate(Trows, 2); // [H, n, i, C]
    Trows.push(mx.subtract(e, mx.matmul(a, above)));
  }
  const T = mx.concatenate(Trows, 2);
  const Bcol = mx.expandDims(B, 3);
  const U = mx.matmul(T, mx.multiply(V, Bcol)); // [H, n, C, Dv]
  const W = mx.matmul(T, mx.multiply(K, mx.multiply(Bcol, mx.expandDims(G, 3)))); // [H, n, C, Dk]
  const QG = mx.multiply(Q, mx.expandDims(G, 3));
  const last = gc.index(mx.Slice(), mx.Slice(), mx.Slice(C - 1, C)); // [H, n, 1]
  const KD = mx.multiply(K, mx.expandDims(mx.exp(mx.subtract(last, gc)), 3)); // (G_C / G_s) k_s
  const GC = mx.exp(last).reshape(-1, n, 1, 1);

  let S = S0.squeeze(0); // [H, Dv, Dk]
  const ys: mx.array[] = [];
  const of = (t: mx.array, c: number) => t.index(mx.Slice(), c);
  for (let c = 0; c < n; c++) {
    const St = S.transpose(0, 2, 1); // [H, Dk, Dv]
    const delta = mx.subtract(of(U, c), mx.matmul(of(W, c), St)); // [H, C, Dv]
    ys.push(mx.add(mx.matmul(of(QG, c), St), mx.matmul(of(M, c), delta)));
    S = mx.add(mx.multiply(S, of(GC, c)), mx.matmul(delta.transpose(0, 2, 1), of(KD, c)));
    const end = position - front + (c + 1) * C; // absolute position after this chunk
    if (end < position + tokens && capturesAt(end)) capture(end - position - 1, mx.expandDims(S, 0));
  }
  // [H, n, C, Dv] -> [n * C, H, Dv] -> the segment's rows.
  const y = (ys.length === 1 ? mx.expandDims(ys[0], 1) : mx.stack(ys, 1))
    .transpose(1, 2, 0, 3)
    .reshape(n * C, -1, V.shape[3]);
  return [mx.expandDims(y.index(mx.Slice(front, front + tokens)), 0), mx.expandDims(S, 0)];
}

/**
 * One token of the gated delta rule, per value head (mlx-lm's `_gated_delta_step_ops`), with
 * S [1, H, Dv, Dk], q/k [1, H, Dk], v [1, H, Dv], g/beta [1, H]:
 *   S = g S;  S += k (beta (v - S k))^T  (written into S's [Dv, Dk] layout);  y = S q.
 * Returns [y [1, H, Dv], S].
 */
export const deltaStep = mx.compile(
  (q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array, S: mx.array): mx.array[] => {
    const decayed = mx.multiply(S, mx.expandDims(g, [2, 3]));
    const kRow = mx.expandDims(k, 2);
    const memory = mx.sum(mx.multiply(decayed, kRow), -1);
    const delta = mx.multiply(mx.subtract(v, memory), mx.expandDims(beta, 2));
    const next = mx.add(decayed, mx.multiply(kRow, mx.expandDims(delta, 3)));
    const y = mx.sum(mx.multiply(next, mx.expandDims(q, 2)), -1);
    return [y, next];
  },
);

/** Per-token, per-head log decay log g = -exp(A_log) * softplus(a + dt_bias), <= 0. */
export const logDecayOf = mx.compile(
  (aLog: mx.array, a: mx.array, dtBias: mx.array): mx.array =>
    mx.negative(mx.multiply(mx.exp(aLog), mx.logaddexp(mx.add(a, dtBias), 0))),
  true,
);
