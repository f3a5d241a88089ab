import * as fs from "node:fs";
import * as path from "node:path";
import {
  GENERATED_STAMP_FILE,
  GENERATOR_VERSION,
  isCurrentlyGenerated,
  resolveModelDir,
} from "../../src/model-gen/generate";
import { modelFingerprint } from "../../src/model/fingerprint";
import { ModelTokenizer } from "../../src/model/tokenizer";
import { removeTempDirs, tempDir } from "./helpers";

afterAll(removeTempDirs);

describe("generated models under the data directory", () => {
  it("are generated on first use, reused after, and generated again when an older kvpark wrote them", async () => {
    const dataDir = tempDir();
    const seen: string[] = [];
    const progress = (what: string) => seen.push(what);
    const dir = await resolveModelDir("tiny", dataDir, progress);
    expect(dir).toBe(path.join(dataDir, "models", "tiny"));
    expect(seen).toEqual(["generating model tiny", "generated model tiny"]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, GENERATED_STAMP_FILE), "utf8"))).toEqual({
      preset: "tiny",
      generatorVersion: GENERATOR_VERSION,
    });
    expect(isCurrentlyGenerated(dir, "tiny")).toBe(true);
    expect(isCurrentlyGenerated(dir, "small")).toBe(false);

    // The stamp is no part of the model: the fingerprint is that of config, weights and tokenizer.
    const fingerprint = await modelFingerprint(dir, ["model.safetensors"]);
    fs.rmSync(path.join(dir, GENERATED_STAMP_FILE));
    expect(await modelFingerprint(dir, ["model.safetensors"])).toBe(fingerprint);

    // Without the stamp (as every model generated before it) the model is generated again...
    seen.length = 0;
    fs.writeFileSync(path.join(dir, "tokenizer.json"), "{}");
    expect(await resolveModelDir("tiny", dataDir, progress)).toBe(dir);
    expect(seen).toEqual(["generating model tiny", "generated model tiny"]);
    expect(await modelFingerprint(dir, ["model.safetensors"])).toBe(fingerprint);
    // ... with the tool-call markers of the current generator; after that it is reused.
    expect(ModelTokenizer.fromDir(dir).toolCallFormat).toBe("hermes");
    seen.length = 0;
    await resolveModelDir("tiny", dataDir, progress);
    expect(seen).toEqual([]);
  });
});
