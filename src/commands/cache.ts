import * as fs from "node:fs";
import * as path from "node:path";
import { toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { PinKind, Tier } from "../../gen/kvpark/v1/common_pb.js";
import { StatsResponseSchema, type CachedBlock } from "../../gen/kvpark/v1/kvblocks_pb.js";
import { BlockError } from "../cache/errors.js";
import { normalizeRecord } from "../cache/block-codec.js";
import { verifyRecord } from "../cache/block-verify.js";
import { BundleReader, bundleModel, entryName } from "../cache/bundle.js";
import {
  createKvparkClient,
  exportBundleToFile,
  importBundleFromFile,
  type KvparkClient,
} from "../client.js";
import { CONFIG_DEFAULTS } from "../config.js";
import { KvparkError } from "../errors.js";
import { USAGE, UsageError, count, file, parse, selection, value, type Args } from "./cache-args.js";

// The offline commands open the store through the prefix cache, which loads MLX: they import
// ../cache/offline.js when they run, so that the online commands start without it.

function client(args: Args): KvparkClient {
  return createKvparkClient({
    baseUrl: value(args, "--url") ?? process.env.KVPARK_URL ?? "http://127.0.0.1:50051",
    token: value(args, "--token") ?? process.env.KVPARK_TOKEN,
    // Exports and imports of a large cache take a while; a stuck call is still ended.
    timeoutMs: 6 * 3600_000,
  });
}

const TIER_NAMES: Record<number, string> = { [Tier.RAM]: "ram", [Tier.SSD]: "ssd" };

function pinName(b: CachedBlock): string {
  if (b.pin === PinKind.HARD) return "hard";
  if (b.pin === PinKind.SOFT) return `soft<${new Date(Number(b.pinExpiresUnixMs)).toISOString()}`;
  return "-";
}

function blockLine(b: CachedBlock, withTenant: boolean): string {
  const used = b.lastUsedUnixMs > 0n ? new Date(Number(b.lastUsedUnixMs)).toISOString() : "-";
  const cells = [
    Buffer.from(b.key).toString("hex"),
    b.tiers.map((t) => TIER_NAMES[t] ?? "?").join("+"),
    String(b.tokenCount),
    String(b.bytes),
    String(b.ssdBytes),
    pinName(b),
    used,
  ];
  if (withTenant) cells.push(b.tenant === "" ? "-" : b.tenant);
  return cells.join("  ");
}

function blockJson(b: CachedBlock, withTenant: boolean): string {
  return JSON.stringify({
    key: Buffer.from(b.key).toString("hex"),
    parentKey: Buffer.from(b.parentKey).toString("hex"),
    tiers: b.tiers.map((t) => TIER_NAMES[t] ?? "?"),
    tokens: b.tokenCount,
    bytes: Number(b.bytes),
    ssdBytes: Number(b.ssdBytes),
    pin: b.pin === PinKind.HARD ? "hard" : b.pin === PinKind.SOFT ? "soft" : null,
    pinExpiresUnixMs: Number(b.pinExpiresUnixMs),
    lastUsedUnixMs: Number(b.lastUsedUnixMs),
    ...(withTenant && { tenant: b.tenant }),
  });
}

async function online(args: Args): Promise<number> {
  const kv = client(args);
  switch (args.command) {
    case "stats": {
      file(args, false);
      const stats = await kv.kvBlocks.stats({});
      console.log(toJsonString(StatsResponseSchema, stats, { prettySpaces: 2, alwaysEmitImplicit: true }));
      return 0;
    }
    case "ls": {
      file(args, false);
      const all = args.flags.has("--all");
      const pageSize = count(args, "--page-size", 100, 1000);
      const json = args.flags.has("--json");
      const head = [
        "key",
        "tiers",
        "tokens",
        "bytes",
        "ssd_bytes",
        "pin",
        "last_used",
        ...(all ? ["tenant"] : []),
      ];
      let token = "";
      let listed = 0;
      do {
        const page = await kv.kvBlocks.listBlocks({ pageSize, pageToken: token, allTenants: all });
        if (!json && listed === 0) console.log(head.join("  "));
        for (const b of page.blocks) console.log(json ? blockJson(b, all) : blockLine(b, all));
        listed += page.blocks.length;
        token = page.nextPageToken;
      } while (token !== "");
      if (!json) console.error(`kvpark: ${listed} blocks`);
      return 0;
    }
    case "evict": {
      file(args, false);
      const blocks = selection(args);
      if (!blocks) throw new UsageError("cache evict needs --key, --prompt or --tokens");
      const tierName = value(args, "--tier") ?? "both";
      const tiers: Record<string, Tier> = { ram: Tier.RAM, ssd: Tier.SSD, both: Tier.UNSPECIFIED };
      if (!(tierName in tiers)) throw new UsageError("--tier: ram, ssd or both");
      const r = await kv.kvBlocks.evict({ blocks, tier: tiers[tierName], force: args.flags.has("--force") });
      console.log(
        `kvpark: evicted ${r.evictedBlocks} blocks (${r.ramBytesFreed} bytes of RAM, ${r.ssdBytesFreed} bytes of SSD); ` +
          `${r.skippedPinnedBlocks} pinned blocks skipped, ${r.missingKeys.length} keys not cached`,
      );
      return 0;
    }
    case "clear": {
      file(args, false);
      const r = await kv.kvBlocks.clear({ allTenants: args.flags.has("--all") });
      console.log(
        `kvpark: removed ${r.removedBlocks} blocks (${r.unpinnedBlocks} of them pinned; ` +
          `${r.ramBytesFreed} bytes of RAM, ${r.ssdBytesFreed} bytes of SSD)`,
      );
      return 0;
    }
    case "export": {
      const out = file(args, true)!;
      const blocks = selection(args);
      const tenant = value(args, "--tenant") ?? "";
      const bytes = await exportBundleToFile(kv, out, { ...(blocks && { blocks }), tenant });
      const summary = await summarizeBundle(out);
      console.log(
        `kvpark: wrote ${out}: ${summary.blocks} blocks, ${bytes} bytes${skippedNote(summary.skipped)}`,
      );
      return 0;
    }
    case "import": {
      const from = file(args, true)!;
      if (!fs.existsSync(from)) throw new KvparkError("NOT_FOUND", `${from}: no such file`);
      const r = await importBundleFromFile(kv, from, { tenant: value(args, "--tenant") ?? "" });
      console.log(
        `kvpark: imported ${from}: ${r.blocks} blocks, ${r.storedBlocks} stored, ${r.presentBlocks} already cached`,
      );
      return 0;
    }
    case "verify": {
      const pieces = (async function* () {
        for await (const res of kv.kvBlocks.export({})) yield res.data;
      })();
      const r = await verifyBundle(pieces);
      if (r.skipped > 0) {
        console.log(
          `kvpark: verified ${r.blocks} blocks of the tenant through Export; ${r.skipped} blocks failed ` +
            `verification in the server or left the cache while it read them (a damaged block is dropped)`,
        );
        return 1;
      }
      console.log(`kvpark: verified ${r.blocks} blocks of the tenant through Export: all intact`);
      return 0;
    }
  }
}

function skippedNote(skipped: number): string {
  return skipped > 0
    ? `; ${skipped} blocks left out (they left the cache or failed verification while exporting)`
    : "";
}

async function summarizeBundle(file: string): Promise<{ blocks: number; skipped: number }> {
  return verifyBundle(fs.createReadStream(file));
}

/** What a bundle holds, once read whole and checked. */
interface BundleSummary {
  blocks: number;
  skipped: number;
  fingerprint: string;
  blockTokens: number;
}

/**
 * Reads a bundle and checks it as Import would, except for the tenant: its structure and checksums,
 * and each block (payload checksum, structure and metadata, shape against the header, finite
 * values, key recomputed from its parent; a chain's first block, whose parent is the unknown
 * tenant's root, is not checked for that). Throws a KvparkError naming the entry.
 */
async function verifyBundle(pieces: AsyncIterable<Uint8Array | string>): Promise<BundleSummary> {
  const reader = new BundleReader();
  const summary: BundleSummary = { blocks: 0, skipped: 0, fingerprint: "", blockTokens: 0 };
  let header: Parameters<typeof bundleModel>[0] | undefined;
  for await (const piece of pieces) {
    for (const entry of reader.push(typeof piece === "string" ? Buffer.from(piece) : piece)) {
      if (entry.kind === "header") {
        header = entry.header;
        summary.fingerprint = header.modelFingerprint;
        summary.blockTokens = header.blockTokens;
      } else if (entry.kind === "manifest") {
        summary.skipped = entry.manifest.skippedBlocks;
      } else {
        const record = normalizeRecord(entry.block);
        try {
          verifyRecord(record, { model: bundleModel(header!), blockTokens: header!.blockTokens, root: null });
        } catch (err) {
          if (!(err instanceof BlockError)) throw err;
          throw new KvparkError(
            err.code,
            `${entryName(entry.index, record.key)}: ${err.code}: ${err.message}`,
          );
        }
        summary.blocks++;
      }
    }
  }
  reader.end();
  return summary;
}

async function verifyBundleFile(file: string): Promise<number> {
  if (!fs.existsSync(file)) throw new KvparkError("NOT_FOUND", `${file}: no such file`);
  const s = await verifyBundle(fs.createReadStream(file));
  console.log(
    `kvpark: ${file}: a complete bundle of ${s.blocks} blocks (model ${s.fingerprint.slice(0, 16)}…, ` +
      `blocks of ${s.blockTokens} tokens), every block intact${skippedNote(s.skipped)}`,
  );
  return 0;
}

/** A store a running server holds: said plainly, with what to do instead. */
function offlineError(err: unknown, dir: string): unknown {
  if (err instanceof KvparkError && err.code === "KV_LOCKED") {
    const pid = /held by pid (\d+)/.exec(err.message)?.[1];
    const holder = pid ? `its LOCK is held by pid ${pid}` : err.message;
    return new KvparkError(
      "KV_LOCKED",
      `the cache in ${dir} is in use by a running server (${holder}); stop the server first, ` +
        `or run the command against it with --url`,
    );
  }
  return err;
}

async function verifyDataDir(dataDir: string): Promise<number> {
  const { ssdDirOf, verifyStore } = await import("../cache/offline.js");
  const ssdDir = ssdDirOf(dataDir);
  let r: Awaited<ReturnType<typeof verifyStore>>;
  try {
    r = await verifyStore(ssdDir);
  } catch (err) {
    throw offlineError(err, ssdDir);
  }
  for (const w of r.storeWarnings) console.log(`kvpark: store: ${w}`);
  for (const n of r.chainLogNotes) console.log(`kvpark: ${n}`);
  for (const d of r.damaged) console.log(`kvpark: block ${d.key}: ${d.reason}`);
  const lost = r.lostAtOpen + r.quarantinedSegments;
  const damage = r.damaged.length + lost;
  console.log(
    `kvpark: ${ssdDir}: ${r.blocks} blocks, ${r.intact} intact, ${r.damaged.length} damaged` +
      (lost > 0
        ? `, ${r.lostAtOpen} damaged records and ${r.quarantinedSegments} quarantined segments found at open`
        : "") +
      (r.models.length > 0 ? `; models ${r.models.map((m) => `${m.slice(0, 16)}…`).join(", ")}` : ""),
  );
  return damage > 0 ? 1 : 0;
}

async function exportDataDir(
  dataDir: string,
  out: string,
  tenant: string,
  blockTokens: number,
): Promise<number> {
  const { openOffline, ssdDirOf } = await import("../cache/offline.js");
  const ssdDir = ssdDirOf(dataDir);
  let cache: Awaited<ReturnType<typeof openOffline>>;
  try {
    cache = await openOffline(ssdDir, blockTokens, { log: (line) => console.error(line) });
  } catch (err) {
    throw offlineError(err, ssdDir);
  }
  const part = `${out}.part`;
  const report = { blocks: 0, skippedBlocks: 0, bytes: 0 };
  try {
    const fd = fs.openSync(part, "w");
    try {
      for await (const piece of cache.exportBundle(tenant, undefined, { report })) fs.writeSync(fd, piece);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(part, out);
  } catch (err) {
    fs.rmSync(part, { force: true });
    throw err;
  } finally {
    await cache.close();
  }
  console.log(
    `kvpark: wrote ${out}: ${report.blocks} blocks, ${report.bytes} bytes, from ${path.resolve(ssdDir)}` +
      skippedNote(report.skippedBlocks),
  );
  return 0;
}

/** `kvpark cache ...`; returns the exit code. */
export async function cacheCommand(argv: string[]): Promise<number> {
  if (argv.length === 0 || argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return argv.length === 0 ? 2 : 0;
  }
  let args: Args;
  try {
    args = parse(argv);
    if (args.command === "verify" && !args.values.has("--data-dir") && args.positional.length > 0) {
      const bundle = file(args, true)!;
      if (args.values.has("--url") || args.values.has("--token")) {
        throw new UsageError("cache verify FILE checks a file: it takes no --url or --token");
      }
      return await withErrors(args, () => verifyBundleFile(bundle));
    }
    if (args.values.has("--data-dir")) {
      if (args.command !== "verify" && args.command !== "export") {
        throw new UsageError(`cache ${args.command} runs against a server: it takes no --data-dir`);
      }
      const dataDir = value(args, "--data-dir")!;
      if (args.command === "verify") {
        file(args, false);
        return await withErrors(args, () => verifyDataDir(dataDir));
      }
      const out = file(args, true)!;
      const fallback = Number(process.env.KVPARK_BLOCK_TOKENS) || CONFIG_DEFAULTS.blockTokens;
      const blockTokens = count(args, "--block-tokens", fallback, 65536);
      const tenant = value(args, "--tenant") ?? "";
      return await withErrors(args, () => exportDataDir(dataDir, out, tenant, blockTokens));
    }
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`kvpark: ${err.message} (kvpark cache --help shows the usage)`);
      return 2;
    }
    throw err;
  }
  return withErrors(args, () => online(args));
}

/** Runs a command, reporting a refused call or an operating error on one line (exit 1). */
async function withErrors(args: Args, run: () => Promise<number>): Promise<number> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`kvpark: ${err.message} (kvpark cache --help shows the usage)`);
      return 2;
    }
    if (err instanceof ConnectError) {
      const code = Code[err.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
      console.error(`kvpark: cache ${args.command}: ${code}: ${err.rawMessage}`);
      return 1;
    }
    if (err instanceof KvparkError) {
      console.error(`kvpark: cache ${args.command}: ${err.code}: ${err.message}`);
      return 1;
    }
    throw err;
  }
}
