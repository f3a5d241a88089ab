/**
 * Time to learn the byte-level BPE tokenizer kvpark writes into every model it generates
 * (`buildTokenizerFiles`, run once per model directory on first use), in the bench process, for the
 * vocabulary sizes of the presets (tiny 512, small and qwen2.5-0.5b 8192) and the 4000 the tokenizer
 * tests use. No server; a few seconds in all.
 */
import { buildTokenizerFiles } from "../../src/model-gen/tokenizer-gen";
import { summarize, type Progress, type Summary } from "../lib/util";

export interface TokenizerOptions {
  vocabSizes: number[];
  runs: number;
  progress: Progress;
}

export interface TokenizerResult {
  runs: number;
  builds: Array<{ vocabSize: number; buildMs: Summary }>;
}

export function runTokenizer(o: TokenizerOptions): TokenizerResult {
  const builds = o.vocabSizes.map((vocabSize) => {
    const samples: number[] = [];
    for (let run = 0; run < o.runs; run++) {
      const t0 = performance.now();
      buildTokenizerFiles({ vocabSize });
      samples.push(performance.now() - t0);
    }
    const buildMs = summarize(samples);
    o.progress.log(
      `tokenizer: ${vocabSize} tokens learned in ${buildMs.median.toFixed(0)} ms (median of ${o.runs})`,
    );
    return { vocabSize, buildMs };
  });
  return { runs: o.runs, builds };
}
