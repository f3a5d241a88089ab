import * as crypto from "node:crypto";
import { KV_LAYOUT_VERSION, blockKey, chainKeys, rootKey } from "../../src/cache";

const FP = "f".repeat(64);

/** The key derivation written out from its definition: SHA-256 over length-framed fields. */
function framedSha256(fields: Buffer[]): string {
  const parts: Buffer[] = [];
  for (const field of fields) {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(field.length);
    parts.push(length, field);
  }
  return crypto.createHash("sha256").update(Buffer.concat(parts)).digest("hex");
}

function u32s(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeUInt32LE(v, i * 4));
  return b;
}

describe("block keys", () => {
  it("the root key is SHA-256 of framed tag, tenant, fingerprint and layout version", () => {
    expect(KV_LAYOUT_VERSION).toBe(1);
    const want = framedSha256([Buffer.from("kvpark-root"), Buffer.from("acme"), Buffer.from(FP), u32s([1])]);
    expect(rootKey("acme", FP).toString("hex")).toBe(want);
    // Golden value (computed with Python's hashlib): a change of derivation would orphan every
    // stored block, so it must not go unnoticed.
    expect(want).toBe("4f486817e31183895ad8933c17e2906e5cb210a93ee32ca6179e49ab5afc98be");
  });

  it("a block key is SHA-256 of framed tag, parent, little-endian token ids, fingerprint and layout version", () => {
    const parent = rootKey("acme", FP);
    const tokens = [1, 2, 70000, 0xffffffff];
    const want = framedSha256([
      Buffer.from("kvpark-block"),
      parent,
      u32s(tokens),
      Buffer.from(FP),
      u32s([1]),
    ]);
    expect(blockKey(parent, tokens, FP).toString("hex")).toBe(want);
    expect(want).toBe("684492481ae86ef94ecaa2720fe9e9e52158e44a9134155cc73de6de29266f5e");
  });

  it("tenants never share a key, and framing keeps field boundaries apart", () => {
    const tokens = [5, 6, 7];
    const a = blockKey(rootKey("a", FP), tokens, FP);
    const b = blockKey(rootKey("b", FP), tokens, FP);
    expect(a.equals(b)).toBe(false);
    expect(rootKey("ab", "c").equals(rootKey("a", "bc"))).toBe(false);
    expect(rootKey("", FP).equals(rootKey("x", FP))).toBe(false);
    expect(
      blockKey(rootKey("a", FP), tokens, FP).equals(blockKey(rootKey("a", "0".repeat(64)), tokens, FP)),
    ).toBe(false);
  });

  it("chainKeys covers full blocks then a shorter tail, each chained to the previous key", () => {
    const root = rootKey("t", FP);
    const tokens = Array.from({ length: 20 }, (_, i) => i + 1);
    const links = chainKeys(root, tokens, 8, FP);
    expect(links.map((l) => [l.start, l.end])).toEqual([
      [0, 8],
      [8, 16],
      [16, 20],
    ]);
    expect(links[0].parent.equals(root)).toBe(true);
    expect(links[1].parent.equals(links[0].key)).toBe(true);
    expect(links[2].key.equals(blockKey(links[1].key, [17, 18, 19, 20], FP))).toBe(true);
    expect(chainKeys(root, tokens, 8, FP, 16).map((l) => l.end)).toEqual([8, 16]);
    expect(chainKeys(root, [], 8, FP)).toEqual([]);
  });

  it("refuses token ids that are not uint32 and empty blocks", () => {
    const root = rootKey("t", FP);
    expect(() => blockKey(root, [1, -1], FP)).toThrow("token id -1 at 1 is not a uint32");
    expect(() => blockKey(root, [2 ** 32], FP)).toThrow("token id 4294967296 at 0 is not a uint32");
    expect(() => blockKey(root, [], FP)).toThrow("a block holds at least one token");
    expect(() => blockKey(Buffer.alloc(31), [1], FP)).toThrow("parent must be a 32-byte Buffer");
  });
});
