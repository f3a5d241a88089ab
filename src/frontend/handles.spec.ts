import { HandleTable } from "./handles";

describe("HandleTable", () => {
  it("gives a handle's context to its own tenant only", () => {
    const table = new HandleTable(10, 60_000);
    const h = table.create("a", [1, 2, 3]);
    expect(h).toMatch(/^ph_[0-9a-f]{32}$/);
    expect(table.get(h, "a")).toEqual([1, 2, 3]);
    expect(table.get(h, "b")).toBeUndefined();
    expect(table.get("ph_unknown", "a")).toBeUndefined();
  });

  it("forgets the least recently used handle beyond its bound", () => {
    const table = new HandleTable(2, 60_000);
    const first = table.create("t", [1]);
    const second = table.create("t", [2]);
    expect(table.get(first, "t")).toEqual([1]);
    const third = table.create("t", [3]);
    expect(table.get(second, "t")).toBeUndefined();
    expect(table.get(first, "t")).toEqual([1]);
    expect(table.get(third, "t")).toEqual([3]);
  });

  it("expires handles after their time to live", () => {
    let now = 1_000_000;
    const table = new HandleTable(10, 1000, () => now);
    const h = table.create("t", [1]);
    now += 999;
    expect(table.get(h, "t")).toEqual([1]);
    now += 2;
    expect(table.get(h, "t")).toBeUndefined();
  });
});
