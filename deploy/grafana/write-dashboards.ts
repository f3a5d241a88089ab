// Writes deploy/grafana/dashboards/*.json from dashboards.ts (`npm run dashboards`).
import * as fs from "node:fs";
import * as path from "node:path";
import { dashboardJson, dashboards } from "./dashboards";

const dir = path.resolve(__dirname, "../../../deploy/grafana/dashboards");
for (const [file, d] of Object.entries(dashboards)) fs.writeFileSync(path.join(dir, file), dashboardJson(d));
