import * as fs from "node:fs";
import { allocatorEnv, findJemalloc, JEMALLOC_CONF } from "./allocator";

describe("the engine's allocator", () => {
  it("finds jemalloc where Debian's libjemalloc2 installs it", () => {
    const library = findJemalloc();
    expect(library).toMatch(/\/libjemalloc\.so\.2$/);
    expect(fs.existsSync(library!)).toBe(true);
  });

  it("preloads jemalloc with the engine's settings, after what is already preloaded", () => {
    const library = findJemalloc()!;
    expect(allocatorEnv("jemalloc", { PATH: "/bin" })).toEqual({
      PATH: "/bin",
      LD_PRELOAD: library,
      MALLOC_CONF: JEMALLOC_CONF,
    });
    const env = allocatorEnv("jemalloc", {
      LD_PRELOAD: `/opt/trace.so ${library}`,
      MALLOC_CONF: "narenas:2",
    });
    expect(env.LD_PRELOAD).toBe(`/opt/trace.so:${library}`);
    // An operator's own tuning wins.
    expect(env.MALLOC_CONF).toBe("narenas:2");
  });

  it("leaves the environment alone for the system allocator", () => {
    const env = { PATH: "/bin", LD_PRELOAD: "/opt/trace.so" };
    expect(allocatorEnv("system", env)).toBe(env);
  });
});
