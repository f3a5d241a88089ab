import { KvparkError } from "../../src/errors";
import { Pins, type PinTarget } from "../../src/cache/pins";
import type { SsdTier } from "../../src/cache/ssd-tier";

/** A stand-in for the SSD tier that records what it is told. */
function fakeSsd() {
  const told: string[] = [];
  const ssd = {
    has: () => true,
    pin: (key: Buffer, kind: "hard" | { ttlMs: number }) => {
      told.push(`pin ${key.toString()} ${kind === "hard" ? "hard" : kind.ttlMs}`);
      return "pinned";
    },
    unpin: (key: Buffer) => {
      told.push(`unpin ${key.toString()}`);
      return true;
    },
  };
  return { ssd: ssd as unknown as SsdTier, told };
}

function block(name: string, ssd: PinTarget["ssd"] = "none", bytes = 100, rootHex = "r"): PinTarget {
  return { key: Buffer.from(name), keyHex: name, rootHex, bytes, ssd };
}

describe("pins", () => {
  it("decide hard and soft pins and when a soft pin ends; a later soft pin never shortens one", () => {
    const clock = { ms: 1000 };
    const pins = new Pins({ hardPinQuotaBytes: 1000, softPinTtlMsDefault: 300 }, null, () => clock.ms);
    pins.pin("r", [block("a")], { kind: "soft", ttlMs: 500 });
    pins.pin("r", [block("a")], { kind: "soft", ttlMs: 100 });
    pins.pin("r", [block("b")], { kind: "soft" }); // the default time to live
    pins.pin("r", [block("c")], { kind: "hard" });
    clock.ms = 1200;
    expect(["a", "b", "c", "d"].map((k) => pins.pinKind(k))).toEqual([
      { ttlMs: 300 },
      { ttlMs: 100 },
      "hard",
      null,
    ]);
    clock.ms = 1500;
    expect(["a", "b", "c"].map((k) => pins.isPinned(k))).toEqual([false, false, true]);
  });

  it("account hard-pinned bytes per tenant: a pin over the quota is refused whole; unpin and forget give bytes back", () => {
    const pins = new Pins({ hardPinQuotaBytes: 250, softPinTtlMsDefault: 1 }, null);
    expect(pins.pin("r", [block("a"), block("b")], { kind: "hard" })).toEqual({
      hardPinnedBytes: 200,
      hardPinQuotaBytes: 250,
    });
    // Pinning a hard-pinned block again costs nothing.
    expect(pins.pin("r", [block("a")], { kind: "hard" }).hardPinnedBytes).toBe(200);
    const overQuota = () => pins.pin("r", [block("a"), block("c")], { kind: "hard" });
    expect(overQuota).toThrow(KvparkError);
    expect(overQuota).toThrow(
      expect.objectContaining({
        code: "RESOURCE_EXHAUSTED",
        message: "hard pin of 100 bytes would exceed the tenant's quota: 200 of 250 bytes pinned",
      }),
    );
    expect(pins.isPinned("c")).toBe(false);
    // Another tenant has its own quota.
    expect(pins.pin("u", [block("d", "none", 100, "u")], { kind: "hard" }).hardPinnedBytes).toBe(100);
    expect(pins.unpin([block("a"), block("c")])).toBe(1);
    pins.forget(block("b"));
    expect(pins.pin("r", [], { kind: "hard" }).hardPinnedBytes).toBe(0);
    expect(pins.pin("u", [], { kind: "hard" }).hardPinnedBytes).toBe(100);
  });

  it("tell the SSD store what they decided: at pin time for stored blocks, when a pinned block is stored, at unpin", () => {
    const clock = { ms: 1000 };
    const { ssd, told } = fakeSsd();
    const pins = new Pins({ hardPinQuotaBytes: 1000, softPinTtlMsDefault: 1 }, ssd, () => clock.ms);
    pins.pin("r", [block("stored", "stored"), block("queued", "queued")], { kind: "soft", ttlMs: 500 });
    expect(told).toEqual(["pin stored 500"]);
    // A soft pin after a hard one leaves the block hard-pinned, and the store is told so.
    pins.pin("r", [block("stored", "stored")], { kind: "hard" });
    pins.pin("r", [block("stored", "stored")], { kind: "soft", ttlMs: 900 });
    expect(told.slice(1)).toEqual(["pin stored hard", "pin stored hard"]);
    // The queued block reaches the store 200 ms later: it gets what is left of its pin.
    clock.ms = 1200;
    pins.onStored(block("queued", "stored"));
    expect(told.slice(3)).toEqual(["pin queued 300"]);
    // Once its soft pin ran out, a block is stored without one.
    pins.pin("r", [block("late", "queued")], { kind: "soft", ttlMs: 100 });
    clock.ms = 1300;
    pins.onStored(block("late", "stored"));
    expect(told.length).toBe(4);
    expect(pins.unpin([block("stored", "stored"), block("late", "stored")])).toBe(1);
    expect(told.slice(4)).toEqual(["unpin stored", "unpin late"]);
  });
});
