import * as fs from "node:fs";
import * as path from "node:path";
import type { Config } from "../config-fields";

/**
 * The engine process's memory allocator. MLX allocates every array with malloc and frees it when its
 * JS wrapper is collected. With glibc's malloc, buffers of a few megabytes and more come from fresh
 * mmap'd pages or from the top of a heap that is trimmed back on free, so nearly every KV buffer,
 * staged restore and attention temporary pays the kernel's first-touch page faults again: copying
 * 200 MB into such pages runs at about 2 GB/s here, into pages the allocator kept at about 11 GB/s.
 * jemalloc keeps freed pages for reuse, and the engine returns them to the kernel when it has been
 * idle for a while (IDLE_PURGE_MS), so an idle engine shrinks back.
 *
 * The choice takes effect when the engine process starts (LD_PRELOAD); `allocatorStats` in the
 * native addon reports which allocator serves the process (see native/src/allocator.h).
 */
/**
 * jemalloc's settings for the engine: one arena for every thread (MLX allocates on more than one,
 * and with an arena per CPU each kept its own freed pages: under 16 concurrent requests the engine's
 * resident size reached twice --engine-memory-max), every size class reuses freed pages (by default
 * jemalloc purges allocations of 8 MiB and more at once, which are exactly the KV and attention
 * buffers), and freed pages are kept until the engine purges them itself, once it has been idle for
 * --engine-idle-purge-ms (while requests keep coming, their buffers reuse the kept pages; an idle
 * engine shrinks back), or once they pass the engine's peak use by --engine-kept-bytes-max (Collector.trim). With any decay time, even 1,000 s, jemalloc 5.3 returned most of a freed
 * 200 MB at once here, and the next restore's mx.load of 200 MB took 105-135 ms in fresh pages
 * against 39-45 ms in kept ones.
 */
export const JEMALLOC_CONF = "narenas:1,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:0";

const LIBRARY = "libjemalloc.so.2";

/** Debian's multiarch directory for this architecture, then the usual library directories. */
function libraryDirs(): string[] {
  const triplet: Record<string, string> = {
    x64: "x86_64-linux-gnu",
    arm64: "aarch64-linux-gnu",
    arm: "arm-linux-gnueabihf",
    ppc64: "powerpc64le-linux-gnu",
    s390x: "s390x-linux-gnu",
  };
  const dirs = ["/usr/lib64", "/usr/lib", "/usr/local/lib"];
  const multiarch = triplet[process.arch];
  return multiarch ? [`/usr/lib/${multiarch}`, ...dirs] : dirs;
}

/** The path of jemalloc's shared library (Debian package libjemalloc2), or undefined. */
export function findJemalloc(): string | undefined {
  for (const dir of libraryDirs()) {
    const candidate = path.join(dir, LIBRARY);
    if (fs.existsSync(candidate)) return candidate;
  }
  return undefined;
}

/**
 * The environment an engine process starts with for `allocator`: `env` with jemalloc preloaded and
 * configured. A MALLOC_CONF already set is kept (an operator's tuning wins), and a library already
 * in LD_PRELOAD stays in front. Throws when jemalloc is asked for and not installed (the
 * configuration's checks report that first).
 */
export function allocatorEnv(
  allocator: Config["engineAllocator"],
  env: NodeJS.ProcessEnv,
): NodeJS.ProcessEnv {
  if (allocator === "system") return env;
  const library = findJemalloc();
  if (!library) {
    throw new Error(
      `--engine-allocator jemalloc: ${LIBRARY} not found in ${libraryDirs().join(", ")}; ` +
        "install it (apt-get install libjemalloc2) or start with --engine-allocator system",
    );
  }
  const preload = (env.LD_PRELOAD ?? "").split(/[\s:]+/).filter((p) => p && p !== library);
  return {
    ...env,
    LD_PRELOAD: [...preload, library].join(":"),
    MALLOC_CONF: env.MALLOC_CONF ?? JEMALLOC_CONF,
  };
}
