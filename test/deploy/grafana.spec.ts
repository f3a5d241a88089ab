import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Tree } from "@lezer/common";
import { parser as traceql } from "@grafana/lezer-traceql";
import { parser as promql } from "@prometheus-io/lezer-promql";
import * as YAML from "yaml";
import { dashboards } from "../../deploy/grafana/dashboards";
import { ROOT } from "../helpers/server";

const DIR = path.join(ROOT, "deploy", "grafana");
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

const files = fs.readdirSync(path.join(DIR, "dashboards")).filter((f) => f.endsWith(".json"));
const committed: Record<string, Any> = Object.fromEntries(
  files.map((f) => [f, JSON.parse(fs.readFileSync(path.join(DIR, "dashboards", f), "utf8"))]),
);

/** Positions of syntax errors in a parse tree; empty when the query parses. */
function errors(tree: Tree): number[] {
  const at: number[] = [];
  tree.iterate({
    enter: (n) => {
      if (n.type.isError) at.push(n.from);
    },
  });
  return at;
}

/** Grafana's variables replaced by sample values, as Grafana interpolates them before querying. */
const interpolate = (q: string) =>
  q
    .replace(/\$__rate_interval/g, "1m")
    .replace(/\$ttft_ms/g, "1000")
    .replace(/\$model/g, ".*");

const panels = Object.entries(committed).flatMap(([file, d]) => d.panels.map((p: Any) => ({ file, ...p })));
const targets = panels.flatMap((p: Any) =>
  p.targets.map((t: Any) => ({ file: p.file, panel: p.title, ...t })),
);

describe("Grafana dashboards", () => {
  it("are the JSON of deploy/grafana/dashboards.ts (run `npm run dashboards` after editing it)", () => {
    expect(files.sort()).toEqual(Object.keys(dashboards).sort());
    for (const [file, d] of Object.entries(dashboards))
      expect([file, committed[file]]).toEqual([file, JSON.parse(JSON.stringify(d))]);
  });

  it("type-check against Grafana's dashboard schema (@grafana/schema)", () => {
    const tsc = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
    const r = spawnSync(
      process.execPath,
      [tsc, "-p", path.join(ROOT, "deploy", "tsconfig.json"), "--noEmit"],
      {
        encoding: "utf8",
      },
    );
    expect(r.stdout + r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  it("have unique uids and panel ids, panels inside the 24-column grid and not overlapping", () => {
    const uids = Object.values(committed).map((d) => d.uid);
    expect(new Set(uids).size).toBe(uids.length);
    for (const d of Object.values(committed)) {
      expect(d.schemaVersion).toBe(39);
      const ids = d.panels.map((p: Any) => p.id);
      expect(new Set(ids).size).toBe(ids.length);
      const cells = new Set<string>();
      for (const p of d.panels) {
        const { x, y, w, h } = p.gridPos;
        expect(x + w).toBeLessThanOrEqual(24);
        for (let i = x; i < x + w; i++)
          for (let j = y; j < y + h; j++) {
            expect(cells.has(`${i},${j}`)).toBe(false);
            cells.add(`${i},${j}`);
          }
      }
    }
  });

  it("query only the provisioned datasources, by uid", () => {
    const provisioned = YAML.parse(
      fs.readFileSync(path.join(DIR, "provisioning", "datasources", "datasources.yaml"), "utf8"),
    );
    const types = Object.fromEntries(provisioned.datasources.map((d: Any) => [d.uid, d.type]));
    for (const t of targets) expect([t.panel, types[t.datasource.uid]]).toEqual([t.panel, t.datasource.type]);
    for (const p of panels) expect(types[p.datasource.uid]).toBe(p.datasource.type);
  });

  it("have PromQL that parses", () => {
    const exprs = targets.filter((t) => t.datasource.type === "prometheus");
    expect(exprs.length).toBe(51);
    for (const t of exprs)
      expect([t.panel, t.expr, errors(promql.parse(interpolate(t.expr)))]).toEqual([t.panel, t.expr, []]);
    // The parser does report mistakes.
    expect(errors(promql.parse("sum(rate(x[1m])"))).not.toEqual([]);
  });

  it("have TraceQL (searches and metrics) that parses", () => {
    const queries = targets.filter((t) => t.datasource.type === "tempo");
    expect(queries.length).toBe(8);
    for (const t of queries)
      expect([t.panel, t.query, errors(traceql.parse(interpolate(t.query)))]).toEqual([t.panel, t.query, []]);
    expect(
      errors(traceql.parse("{span.kvpark.ttft.ms > 1000} | quantile_over_time(duration, .99)")),
    ).not.toEqual([]);
  });

  it("cover what operators asked for", () => {
    const titles = panels.map((p: Any) => p.title);
    expect(titles).toEqual(
      expect.arrayContaining([
        "Time to first token by model (p50, p95, p99)",
        "Prompt tokens by source (reuse by tier)",
        "Restore latency against bytes",
        "Restore vs recompute decisions",
        "Corruptions, write errors and skipped writes",
        "Error ratio",
        "Slow requests",
        "Engine memory against its bound",
        "Engine sequences and decode batch",
        "Shared tier: hits, misses and connection",
        "Shared tier: bytes read and written",
        "Shared tier: round-trip latency (mean)",
        "Shared tier: errors, timeouts, rejected and lost blocks",
      ]),
    );
    // A slow TTFT series links to that model's slow requests in the traces dashboard.
    const ttft = panels.find((p: Any) => p.title === "Time to first token by model (p50, p95, p99)");
    expect(ttft.fieldConfig.defaults.links[0].url).toBe(
      "/d/kvpark-traces/kvpark-traces?${__url_time_range}&var-model=${__field.labels.gen_ai_request_model}",
    );
    expect(committed["kvpark-traces.json"].uid).toBe("kvpark-traces");
  });
});
