import { Pins } from "../../src/cache/pins";
import { RamTier } from "../../src/cache/ram-tier";

// The tier never looks inside a block's arrays, so these tests hold none.
const NO_LAYERS: never[] = [];

function tier(bytesMax: number, isPinned?: (keyHex: string) => boolean) {
  const dropped: string[] = [];
  const ram = new RamTier(bytesMax, (key) => dropped.push(key), isPinned);
  return { ram, dropped };
}

describe("RAM tier (block pool)", () => {
  it("evicts least recently used blocks to fit a new one, within the byte budget", () => {
    const { ram, dropped } = tier(300);
    expect(ram.insert("a", NO_LAYERS, 1, 100)).toBe(true);
    expect(ram.insert("b", NO_LAYERS, 1, 100)).toBe(true);
    expect(ram.insert("c", NO_LAYERS, 1, 100)).toBe(true);
    ram.touch("a"); // order now b, c, a
    expect(ram.insert("d", NO_LAYERS, 1, 150)).toBe(true);
    expect(dropped).toEqual(["b", "c"]);
    expect(ram.stats()).toEqual({
      bytes: 250,
      bytesMax: 300,
      blocks: 2,
      evictions: 2,
      pinnedBlocks: 0,
      insertRejects: 0,
      freedBytes: 200,
    });
    expect(ram.takeFreedBytes()).toBe(200);
    expect(ram.takeFreedBytes()).toBe(0);
  });

  it("never evicts a referenced block; refuses an insert without evicting when nothing can go", () => {
    const { ram, dropped } = tier(200);
    ram.insert("a", NO_LAYERS, 1, 100);
    ram.insert("b", NO_LAYERS, 1, 100);
    const a = ram.acquire("a")!;
    const b = ram.acquire("b")!;
    expect(ram.insert("c", NO_LAYERS, 1, 100)).toBe(false);
    expect(dropped).toEqual([]);
    expect(ram.stats().insertRejects).toBe(1);
    ram.release(b);
    expect(ram.insert("c", NO_LAYERS, 1, 100)).toBe(true);
    expect(dropped).toEqual(["b"]);
    expect(ram.remove("a")).toBe(false); // still referenced
    ram.release(a);
    expect(ram.remove("a")).toBe(true);
    expect(() => ram.release(a)).toThrow("release of unreferenced block a");
    expect(ram.insert("big", NO_LAYERS, 1, 201)).toBe(false);
  });

  it("hard pins hold until unpinned; soft pins until their time to live runs out", () => {
    // The tier holds no pin state: it asks the cache's pins, which decide.
    const clock = { ms: 1000 };
    const pins = new Pins(
      { hardPinQuotaBytes: 1000, softPinTtlMsDefault: 1, softPinTtlMsMax: 1e9 },
      null,
      () => clock.ms,
    );
    const block = (keyHex: string) => ({
      key: Buffer.alloc(32),
      keyHex,
      rootHex: "r",
      bytes: 100,
      ssd: "none" as const,
    });
    const { ram, dropped } = tier(200, (keyHex) => pins.isPinned(keyHex));
    ram.insert("hard", NO_LAYERS, 1, 100);
    ram.insert("soft", NO_LAYERS, 1, 100);
    pins.pin("r", [block("hard")], { kind: "hard" });
    pins.pin("r", [block("soft")], { kind: "soft", ttlMs: 500 });
    pins.pin("r", [block("absent")], { kind: "hard" });
    expect(ram.stats().pinnedBlocks).toBe(2);
    expect(ram.insert("x", NO_LAYERS, 1, 100)).toBe(false);
    clock.ms = 1500; // the soft pin ends at 1500
    expect(ram.stats().pinnedBlocks).toBe(1);
    expect(ram.insert("x", NO_LAYERS, 1, 100)).toBe(true);
    expect(dropped).toEqual(["soft"]);
    expect(pins.unpin([block("hard")])).toBe(1);
    expect(ram.insert("y", NO_LAYERS, 1, 100)).toBe(true);
    expect(dropped).toEqual(["soft", "hard"]);
    // A block pinned while the tier did not hold it is protected once it arrives.
    expect(ram.insert("absent", NO_LAYERS, 1, 100)).toBe(true);
    expect(ram.insert("z", NO_LAYERS, 1, 100)).toBe(true);
    expect(dropped).toEqual(["soft", "hard", "x", "y"]);
    expect(ram.stats().pinnedBlocks).toBe(1);
  });

  it("inserting a block already held only marks it used", () => {
    const { ram, dropped } = tier(200);
    ram.insert("a", NO_LAYERS, 1, 100);
    ram.insert("b", NO_LAYERS, 1, 100);
    expect(ram.insert("a", NO_LAYERS, 1, 100)).toBe(true);
    ram.insert("c", NO_LAYERS, 1, 100);
    expect(dropped).toEqual(["b"]);
    expect(ram.stats().bytes).toBe(200);
  });
});
