/** A turn of an agent loop as the reuse check sees it: the prompt's token ids and the output's. */
export interface SeenTurn {
  promptIds: number[];
  outputIds: number[];
}

/**
 * How many leading tokens of `ids` an exact prefix cache holding every earlier turn's prompt
 * followed by its output could reuse: the longest start `ids` shares with any of them, less the
 * prompt's last token, which Generate always computes.
 */
export function idealReuse(ids: readonly number[], earlier: readonly SeenTurn[]): number {
  let best = 0;
  for (const e of earlier) {
    const seen = [...e.promptIds, ...e.outputIds];
    let n = 0;
    while (n < ids.length && n < seen.length && ids[n] === seen[n]) n++;
    best = Math.max(best, n);
  }
  return Math.min(best, ids.length - 1);
}
