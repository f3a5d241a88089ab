import { StopStringFilter } from "./stop-strings";

describe("StopStringFilter", () => {
  it("emits text that cannot start a stop string at once", () => {
    const f = new StopStringFilter(["</end>"]);
    expect(f.push("hello ")).toEqual({ text: "hello ", stopped: false });
    expect(f.push("wor<")).toEqual({ text: "wor", stopped: false });
    expect(f.push("b>")).toEqual({ text: "<b>", stopped: false });
  });

  it("stops on a stop string split across pushes and drops it", () => {
    const f = new StopStringFilter(["STOP", "</end>"]);
    expect(f.push("abc </e")).toEqual({ text: "abc ", stopped: false });
    expect(f.push("nd> tail")).toEqual({ text: "", stopped: true });
  });

  it("picks the earliest of several stop strings", () => {
    const f = new StopStringFilter(["xyz", "b"]);
    expect(f.push("axyzb")).toEqual({ text: "a", stopped: true });
  });

  it("flushes held text when generation ends otherwise", () => {
    const f = new StopStringFilter(["STOP"]);
    expect(f.push("go ST")).toEqual({ text: "go ", stopped: false });
    expect(f.flush()).toBe("ST");
  });
});
