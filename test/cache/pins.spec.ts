import { KvparkError } from "../../src/errors";
import { Pins, type PinTarget } from "../../src/cache/pins";
import type { SsdTier } from "../../src/cache/ssd-tier";

/** A stand-in for the SSD tier that records what it is told. */
function fakeSsd() {
  const told: string[] = [];
  const ssd = {
    recordPins: (changes: { key: Buffer; hard: boolean; softUntilMs: number }[]) =>
      changes.forEach((c) => told.push(`record ${c.key.toString()} ${c.hard ? "hard" : c.softUntilMs}`)),
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
    const pins = new Pins(
      { hardPinQuotaBytes: 1000, softPinTtlMsDefault: 300, softPinTtlMsMax: 1e9 },
      null,
      () => clock.ms,
    );
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

  it("account pinned bytes per tenant, soft pins included until they expire: a pin over the quota is refused whole", () => {
    const clock = { ms: 1000 };
    const pins = new Pins(
      { hardPinQuotaBytes: 250, softPinTtlMsDefault: 1, softPinTtlMsMax: 2 ** 32 * 1000 },
      null,
      () => clock.ms,
    );
    expect(pins.pin("r", [block("a"), block("b")], { kind: "hard" })).toEqual({
      hardPinnedBytes: 200,
      softPinnedBytes: 0,
      hardPinQuotaBytes: 250,
    });
    // Pinning a hard-pinned block again costs nothing; naming a block twice counts it once.
    expect(pins.pin("r", [block("a"), block("a")], { kind: "hard" }).hardPinnedBytes).toBe(200);
    const overQuota = () => pins.pin("r", [block("a"), block("c")], { kind: "hard" });
    expect(overQuota).toThrow(KvparkError);
    expect(overQuota).toThrow(
      expect.objectContaining({
        code: "RESOURCE_EXHAUSTED",
        message: "hard pin of 100 bytes would exceed the tenant's quota: 200 of 250 bytes pinned",
      }),
    );
    // A soft pin counts too, whatever its time to live: a tenant cannot pin past its quota that way.
    expect(() => pins.pin("r", [block("c")], { kind: "soft", ttlMs: 2 ** 32 * 1000 })).toThrow(
      expect.objectContaining({
        code: "RESOURCE_EXHAUSTED",
        message: "soft pin of 100 bytes would exceed the tenant's quota: 200 of 250 bytes pinned",
      }),
    );
    expect(pins.isPinned("c")).toBe(false);
    expect(pins.unpin([block("b")])).toBe(1);
    expect(pins.pin("r", [block("c")], { kind: "soft", ttlMs: 500 })).toEqual({
      hardPinnedBytes: 100,
      softPinnedBytes: 100,
      hardPinQuotaBytes: 250,
    });
    // A hard pin over a soft one adds nothing to the tenant's pinned bytes.
    expect(pins.pin("r", [block("c")], { kind: "hard" })).toMatchObject({
      hardPinnedBytes: 200,
      softPinnedBytes: 0,
    });
    pins.unpin([block("c")]);
    pins.pin("r", [block("d")], { kind: "soft", ttlMs: 500 });
    expect(() => pins.pin("r", [block("e")], { kind: "hard" })).toThrow(
      expect.objectContaining({ code: "RESOURCE_EXHAUSTED" }),
    );
    // Once a soft pin expired, its bytes are back.
    clock.ms = 1500;
    expect(pins.pin("r", [block("e")], { kind: "hard" })).toMatchObject({
      hardPinnedBytes: 200,
      softPinnedBytes: 0,
    });
    // Another tenant has its own quota; forget gives the bytes of a vanished block back.
    expect(pins.pin("u", [block("f", "none", 100, "u")], { kind: "hard" }).hardPinnedBytes).toBe(100);
    pins.forget(block("a"));
    expect(pins.usage("r")).toEqual({ hardPinnedBytes: 100, softPinnedBytes: 0 });
    expect(pins.usage("u")).toEqual({ hardPinnedBytes: 100, softPinnedBytes: 0 });
  });

  it("refuse a soft pin longer than softPinTtlMsMax with INVALID_ARGUMENT naming the flag", () => {
    const pins = new Pins(
      { hardPinQuotaBytes: 1000, softPinTtlMsDefault: 1000, softPinTtlMsMax: 60_000 },
      null,
    );
    expect(() => pins.pin("r", [block("a")], { kind: "soft", ttlMs: 60_001 })).toThrow(
      expect.objectContaining({
        code: "INVALID_ARGUMENT",
        message: "a soft pin of 60.001 s exceeds the longest allowed, 60 s (--soft-pin-ttl-max-seconds)",
      }),
    );
    expect(pins.isPinned("a")).toBe(false);
    expect(pins.pin("r", [block("a")], { kind: "soft", ttlMs: 60_000 }).softPinnedBytes).toBe(100);
  });

  it("tell the SSD store what they decided and record every change in the pin journal", () => {
    const clock = { ms: 1000 };
    const { ssd, told } = fakeSsd();
    const pins = new Pins(
      { hardPinQuotaBytes: 1000, softPinTtlMsDefault: 1, softPinTtlMsMax: 1e9 },
      ssd,
      () => clock.ms,
    );
    pins.pin("r", [block("stored", "stored"), block("queued", "queued")], { kind: "soft", ttlMs: 500 });
    expect(told).toEqual(["pin stored 500", "record stored 1500", "record queued 1500"]);
    // A soft pin after a hard one leaves the block hard-pinned, and the store is told so.
    pins.pin("r", [block("stored", "stored")], { kind: "hard" });
    pins.pin("r", [block("stored", "stored")], { kind: "soft", ttlMs: 900 });
    expect(told.slice(3)).toEqual([
      "pin stored hard",
      "record stored hard",
      "pin stored hard",
      "record stored hard",
    ]);
    // The queued block reaches the store 200 ms later: it gets what is left of its pin.
    clock.ms = 1200;
    pins.onStored(block("queued", "stored"));
    expect(told.slice(7)).toEqual(["pin queued 300"]);
    // Once its soft pin ran out, a block is stored without one.
    pins.pin("r", [block("late", "queued")], { kind: "soft", ttlMs: 100 });
    clock.ms = 1300;
    told.length = 0;
    pins.onStored(block("late", "stored"));
    expect(told).toEqual([]);
    expect(pins.unpin([block("stored", "stored"), block("late", "stored")])).toBe(1);
    expect(told).toEqual(["unpin stored", "unpin late", "record stored 0", "record late 0"]);
  });

  it("learn the pins a restart found: they protect the block and count against the quota again", () => {
    const clock = { ms: 1000 };
    const pins = new Pins(
      { hardPinQuotaBytes: 250, softPinTtlMsDefault: 1, softPinTtlMsMax: 1e9 },
      null,
      () => clock.ms,
    );
    pins.learn(block("a", "stored"), { hard: true, softUntilMs: 0 });
    pins.learn(block("b", "stored"), { hard: false, softUntilMs: 1500 });
    expect(pins.pinKind("a")).toBe("hard");
    expect(pins.pinKind("b")).toEqual({ ttlMs: 500 });
    expect(pins.usage("r")).toEqual({ hardPinnedBytes: 100, softPinnedBytes: 100 });
    expect(() => pins.pin("r", [block("c")], { kind: "hard" })).toThrow(
      expect.objectContaining({ code: "RESOURCE_EXHAUSTED" }),
    );
    clock.ms = 1500;
    expect(pins.isPinned("b")).toBe(false);
    expect(pins.pin("r", [block("c")], { kind: "hard" }).hardPinnedBytes).toBe(200);
  });
});
