import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CONFIG_DEFAULTS } from "../../src/config";
import { ENGINE_ALLOCATORS, type Config } from "../../src/config-fields";
import { allocatorEnv } from "../../src/engine/allocator";

/** What the numbers were measured on. */
export interface Machine {
  cpu: string;
  cores: number;
  ramGiB: number;
  os: string;
  kernel: string;
  virtualization: string;
  disk: string;
  node: string;
  mlxPackage: string;
  /** The engine processes' malloc (--engine-allocator, or KVPARK_ENGINE_ALLOCATOR for the whole run). */
  engineAllocator: Config["engineAllocator"];
  kvparkCommit: string;
  kvparkDirty: boolean;
  loadAverageAtStart: number[];
  loadAverageAtEnd?: number[];
  pageCacheDrop: string;
}

/**
 * The allocator every engine of the run uses: the servers read KVPARK_ENGINE_ALLOCATOR from the
 * environment they inherit, and the in-process model benchmarks are started with the same.
 */
export function benchAllocator(): Config["engineAllocator"] {
  const chosen = process.env.KVPARK_ENGINE_ALLOCATOR;
  return ENGINE_ALLOCATORS.find((a) => a === chosen) ?? CONFIG_DEFAULTS.engineAllocator;
}

/** The environment of a child process that runs the model in-process: the run's allocator preloaded. */
export function engineEnv(): NodeJS.ProcessEnv {
  return allocatorEnv(benchAllocator(), process.env);
}

function run(cmd: string, args: string[], cwd?: string): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "";
  }
}

function osName(): string {
  try {
    const text = fs.readFileSync("/etc/os-release", "utf8");
    return /^PRETTY_NAME="?([^"\n]*)"?/m.exec(text)?.[1] ?? os.type();
  } catch {
    return os.type();
  }
}

/** The block device behind `dir`, with its size and whether it rotates. */
function diskOf(dir: string): string {
  const df = run("df", ["--output=source,fstype", dir]).split("\n")[1]?.trim().split(/\s+/) ?? [];
  const [source, fstype] = df;
  if (!source) return "unknown";
  const name = path.basename(source);
  const base = name.replace(/p?\d+$/, "");
  const read = (p: string) => {
    try {
      return fs.readFileSync(p, "utf8").trim();
    } catch {
      return "";
    }
  };
  const dev = fs.existsSync(`/sys/block/${name}`) ? name : base;
  const sectors = Number(read(`/sys/block/${dev}/size`));
  const rotational = read(`/sys/block/${dev}/queue/rotational`);
  const model = read(`/sys/block/${dev}/device/model`);
  const size = sectors ? `${((sectors * 512) / 2 ** 30).toFixed(0)} GiB` : "";
  // Virtual disks (virtio) often report 1 whatever the medium: shown as the kernel's flag only.
  const kind = rotational ? `queue/rotational=${rotational}` : "";
  return [source, fstype, model, size, kind].filter(Boolean).join(", ");
}

export function describeMachine(repoDir: string, dataDir: string): Machine {
  const cpus = os.cpus();
  const hypervisor = /^Hypervisor vendor:\s*(.+)$/m.exec(run("lscpu", []))?.[1]?.trim();
  const container = run("systemd-detect-virt", ["--container"]);
  const virt =
    [
      hypervisor ? `${hypervisor} guest` : "",
      container && container !== "none" ? `${container} container` : "",
    ]
      .filter(Boolean)
      .join(", ") || "none detected";
  let mlxPackage: string;
  try {
    const pkg = JSON.parse(
      fs.readFileSync(path.join(repoDir, "node_modules/@frost-beta/mlx/package.json"), "utf8"),
    ) as { version: string };
    mlxPackage = `@frost-beta/mlx ${pkg.version}`;
  } catch {
    mlxPackage = "unknown";
  }
  return {
    cpu: cpus[0]?.model.trim() ?? "unknown",
    cores: cpus.length,
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: osName(),
    kernel: os.release(),
    virtualization: virt,
    disk: diskOf(dataDir),
    node: process.version,
    mlxPackage,
    engineAllocator: benchAllocator(),
    kvparkCommit: run("git", ["rev-parse", "--short=12", "HEAD"], repoDir) || "unknown",
    kvparkDirty: run("git", ["status", "--porcelain", "--", "src", "native", "bench"], repoDir) !== "",
    loadAverageAtStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
    pageCacheDrop: "unknown",
  };
}
