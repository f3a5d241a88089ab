import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { PinKind, Tier } from "../../gen/kvpark/v1/common_pb.js";
import {
  BlockErrorCode,
  KVBlocksService,
  type GetBlocksResponseSchema,
  type ImportRequest,
  type PutBlocksRequest,
} from "../../gen/kvpark/v1/kvblocks_pb.js";
import type { Config } from "../config.js";
import type {
  BlockErrorCode as CacheBlockErrorCode,
  CacheStats,
  EngineStats,
  EvictTier,
  ListedBlock,
  PutBlocksReport,
} from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import { adminKey, DEFAULT_TENANT, parseAuthTokens, tenantKey } from "../frontend/auth.js";
import { GetBlocksTrace, traceLookup, tracePin, tracePutBlocks, traceUnpin } from "../telemetry/index.js";
import { served, type RpcDeps } from "./deps.js";
import { blockSelection, checkKeys, pinHint, promptTokens } from "./validation.js";

function blockErrorCode(code: CacheBlockErrorCode): BlockErrorCode {
  return BlockErrorCode[code as keyof typeof BlockErrorCode] ?? BlockErrorCode.UNSPECIFIED;
}

function tier(t: "ram" | "ssd"): Tier {
  return t === "ram" ? Tier.RAM : Tier.SSD;
}

function engineStats(e: EngineStats | undefined) {
  if (!e) return undefined;
  return {
    rssBytes: BigInt(e.rssBytes),
    memoryMaxBytes: BigInt(e.memoryMaxBytes),
    memoryReservedBytes: BigInt(e.memoryReservedBytes),
    sequencesRunning: e.sequencesRunning,
    sequencesWaiting: e.sequencesWaiting,
    decodeBatch: e.decodeBatch,
    steps: BigInt(e.steps),
    allocatorActiveBytes: BigInt(e.allocatorActiveBytes ?? 0),
    allocatorKeptBytes: BigInt(e.allocatorKeptBytes ?? 0),
    allocatorPurges: BigInt(e.allocatorPurges ?? 0),
  };
}

function stats(s: CacheStats, engine: EngineStats | undefined) {
  const tierStats = (t: CacheStats["ram"]) => ({
    bytes: BigInt(t.bytes),
    bytesMax: BigInt(t.bytesMax),
    blocks: BigInt(t.blocks),
    hits: BigInt(t.hits),
    misses: BigInt(t.misses),
    evictions: BigInt(t.evictions),
    pinnedBlocks: BigInt(t.pinnedBlocks),
    removedBlocks: BigInt(t.removed),
  });
  return {
    ram: tierStats(s.ram),
    ssd: tierStats(s.ssd),
    blockTokens: s.blockTokens,
    modelFingerprint: s.modelFingerprint,
    writeQueueDepth: s.writeQueueDepth,
    writeSkips: BigInt(s.writeSkips),
    corruptBlocks: BigInt(s.corruptBlocks),
    writeErrors: BigInt(s.writeErrors),
    writeErrorsEnospc: BigInt(s.writeErrorsEnospc),
    writeErrorsEio: BigInt(s.writeErrorsEio),
    writeErrorsOther: BigInt(s.writeErrorsOther),
    ssdQuarantinedSegments: s.ssdQuarantinedSegments,
    engine: engineStats(engine),
    shared: sharedStats(s),
  };
}

function sharedStats(s: CacheStats) {
  const t = s.shared;
  if (!t) return undefined;
  return {
    connected: t.connected,
    hits: BigInt(t.hits),
    misses: BigInt(t.misses),
    readBlocks: BigInt(t.readBlocks),
    readBytes: BigInt(t.readBytes),
    writtenBlocks: BigInt(t.writtenBlocks),
    writtenBytes: BigInt(t.writtenBytes),
    writeSkips: BigInt(t.writeSkips),
    writeErrors: BigInt(t.writeErrors),
    writeQueueDepth: t.writeQueueDepth,
    readErrors: BigInt(t.readErrors),
    timeouts: BigInt(t.timeouts),
    rejectedBlocks: BigInt(t.rejectedBlocks),
    lostBlocks: BigInt(t.lostBlocks),
    requests: BigInt(t.requests),
    requestSeconds: t.requestMs / 1000,
    restoreBytesPerSecond: s.rates.sharedRestoreBytesPerSecond,
  };
}

function cachedBlock(b: ListedBlock) {
  return {
    key: b.key,
    parentKey: b.parentKey,
    tiers: b.tiers.map(tier),
    tokenCount: b.tokens,
    bytes: BigInt(b.bytes),
    ssdBytes: BigInt(b.ssdBytes),
    pin: b.pin === null ? PinKind.UNSPECIFIED : b.pin.kind === "hard" ? PinKind.HARD : PinKind.SOFT,
    pinExpiresUnixMs: BigInt(b.pin?.kind === "soft" ? b.pin.untilMs : 0),
    lastUsedUnixMs: BigInt(b.usedAtMs),
    tenant: b.tenant ?? "",
  };
}

const LIST_PAGE_SIZE_DEFAULT = 100;
/** As the cache's LIST_PAGE_BLOCKS_MAX (the front end does not load the cache's code). */
const LIST_PAGE_SIZE_MAX = 1000;

function evictTier(t: Tier): EvictTier {
  switch (t) {
    case Tier.UNSPECIFIED:
      return "both";
    case Tier.RAM:
      return "ram";
    case Tier.SSD:
      return "ssd";
    default:
      throw invalidField("tier", `unknown tier ${t}: TIER_RAM, TIER_SSD, or TIER_UNSPECIFIED for both`);
  }
}

/** Tenants the server's tokens name (the default tenant without authentication). */
function knownTenants(config: Config): string[] {
  const names = new Set([
    ...parseAuthTokens(config.authTokens).values(),
    ...parseAuthTokens(config.adminTokens, "--admin-tokens").values(),
  ]);
  return names.size === 0 ? [DEFAULT_TENANT] : [...names];
}

/** Refuses an operators-only request field to other callers. */
function requireAdmin(ctx: HandlerContext, field: string): void {
  if (!ctx.values.get(adminKey)) {
    throw new ConnectError(`${field}: only operators (--admin-tokens) may set it`, Code.PermissionDenied);
  }
}

/** The tenant a request names (operators only, and one the server's tokens name), or the caller's. */
function namedTenant(name: string, field: string, ctx: HandlerContext, tenants: () => string[]): string {
  if (name === "") return ctx.values.get(tenantKey);
  requireAdmin(ctx, field);
  if (!tenants().includes(name)) throw invalidField(field, "no token of the server names this tenant");
  return name;
}

/** kvpark.v1.KVBlocksService: thin translation to the engine's prefix cache. */
export function registerKVBlocks(router: ConnectRouter, deps: RpcDeps): void {
  const { engine } = deps;
  let tenantNames: string[] | undefined;
  const tenants = () => (tenantNames ??= knownTenants(deps.config));
  router.service(KVBlocksService, {
    lookup: async (req, ctx) => {
      const { info, encoder } = served(deps);
      const tokens = await promptTokens(req.prompt, "prompt", encoder, info);
      const r = await engine.lookup(ctx.values.get(tenantKey), tokens, ctx.signal);
      traceLookup(ctx, tokens.length, r);
      return {
        promptTokens: tokens.length,
        cachedTokens: r.tokens,
        ramTokens: r.ramTokens,
        ssdTokens: r.ssdTokens,
        blocks: r.blocks.map((b) => ({
          key: b.key,
          tier: tier(b.tier),
          startToken: b.start,
          tokenCount: b.tokens,
        })),
      };
    },

    async *getBlocks(req, ctx) {
      checkKeys(req.keys, "keys");
      served(deps);
      const trace = GetBlocksTrace.start(ctx, req.keys);
      const call = engine.call(
        (id) => ({
          type: "kv",
          id,
          tenant: ctx.values.get(tenantKey),
          op: "getBlocks",
          keys: req.keys.map((k) => Buffer.from(k)),
        }),
        ctx.signal,
      );
      for await (const ev of call.events) {
        if (ev.type !== "kv-item") continue;
        const item = ev.item;
        trace?.item(item);
        const out: MessageInitShape<typeof GetBlocksResponseSchema> =
          "block" in item
            ? { key: item.key, result: { case: "block", value: item.block } }
            : {
                key: item.key,
                result: {
                  case: "error",
                  value: { code: blockErrorCode(item.error.code), message: item.error.message },
                },
              };
        yield out;
      }
      trace?.end();
    },

    putBlocks: async (requests: AsyncIterable<PutBlocksRequest>, ctx) => {
      served(deps);
      // A malformed message cancels the call in the engine, which then stops reading blocks.
      const abort = new AbortController();
      const call = engine.call(
        (id) => ({ type: "kv", id, tenant: ctx.values.get(tenantKey), op: "putBlocks" }),
        AbortSignal.any([ctx.signal, abort.signal]),
      );
      let index = 0;
      let bytes = 0;
      for await (const req of requests) {
        if (!req.block) {
          const err = invalidField(`requests[${index}].block`, "required");
          abort.abort(err);
          throw err;
        }
        call.send({ type: "kv-put", id: call.id, block: req.block });
        bytes += req.block.payload.byteLength;
        index++;
      }
      call.send({ type: "kv-put", id: call.id });
      let result: PutBlocksReport | undefined;
      for await (const ev of call.events)
        if (ev.type === "kv-result" && ev.result.op === "putBlocks") result = ev.result.value;
      if (!result) throw new KvparkError("INTERNAL", "the engine ended PutBlocks without a result");
      tracePutBlocks(ctx, { blocks: index, bytes }, result);
      if (index === 0) throw invalidField("requests", "send at least one block");
      // When nothing was stored, the call itself fails with the first reason, so that callers that
      // only look at the status learn why; partial success returns the per-block reasons.
      if (result.accepted === 0 && result.rejected.length > 0) {
        const first = result.rejected[0];
        throw new KvparkError(
          first.code,
          `block ${first.index}: ${first.code}: ${first.message}` +
            (result.rejected.length > 1 ? ` (and ${result.rejected.length - 1} more refused)` : ""),
        );
      }
      return {
        accepted: result.accepted,
        rejected: result.rejected.map((r) => ({
          index: r.index,
          key: r.key,
          error: { code: blockErrorCode(r.code), message: r.message },
        })),
      };
    },

    pin: async (req, ctx) => {
      const sel = await blockSelection(req.blocks, "blocks", () => served(deps));
      const kind = pinHint(req.kind, req.ttlSeconds, { kind: "kind", ttl: "ttl_seconds" }, deps.config);
      const r = await engine.pin(ctx.values.get(tenantKey), sel, kind, ctx.signal);
      tracePin(ctx, kind.kind, r);
      return {
        pinnedBlocks: r.pinnedBlocks,
        missingKeys: r.missingKeys,
        hardPinnedBytes: BigInt(r.hardPinnedBytes),
        hardPinQuotaBytes: BigInt(r.hardPinQuotaBytes),
      };
    },

    unpin: async (req, ctx) => {
      const sel = await blockSelection(req.blocks, "blocks", () => served(deps));
      const r = await engine.unpin(ctx.values.get(tenantKey), sel, ctx.signal);
      traceUnpin(ctx, r.unpinnedBlocks);
      return r;
    },

    stats: async (_req, ctx) => {
      served(deps);
      const all = ctx.values.get(adminKey);
      const s = await engine.stats(ctx.values.get(tenantKey), all, ctx.signal);
      return stats(s, engine.engineStats);
    },

    listBlocks: async (req, ctx) => {
      served(deps);
      if (req.allTenants) requireAdmin(ctx, "all_tenants");
      if (req.pageSize > LIST_PAGE_SIZE_MAX)
        throw invalidField("page_size", `at most ${LIST_PAGE_SIZE_MAX}, got ${req.pageSize}`);
      if (req.pageToken !== "" && !/^[0-9a-f]{64}$/.test(req.pageToken))
        throw invalidField("page_token", "not a next_page_token this server gave");
      const page = await engine.listBlocks(
        ctx.values.get(tenantKey),
        {
          ...(req.allTenants && { names: tenants() }),
          pageSize: req.pageSize || LIST_PAGE_SIZE_DEFAULT,
          after: req.pageToken,
        },
        ctx.signal,
      );
      return {
        blocks: page.blocks.map(cachedBlock),
        nextPageToken: page.nextAfter,
        totalBlocks: BigInt(page.total),
      };
    },

    evict: async (req, ctx) => {
      const tier = evictTier(req.tier);
      const sel = await blockSelection(req.blocks, "blocks", () => served(deps));
      const r = await engine.evict(ctx.values.get(tenantKey), sel, { tier, force: req.force }, ctx.signal);
      return {
        evictedBlocks: r.evictedBlocks,
        skippedPinnedBlocks: r.skippedPinnedBlocks,
        missingKeys: r.missingKeys,
        ramBytesFreed: BigInt(r.ramBytesFreed),
        ssdBytesFreed: BigInt(r.ssdBytesFreed),
      };
    },

    clear: async (req, ctx) => {
      served(deps);
      if (req.allTenants) requireAdmin(ctx, "all_tenants");
      const r = await engine.clear(ctx.values.get(tenantKey), req.allTenants, ctx.signal);
      return {
        removedBlocks: r.removedBlocks,
        unpinnedBlocks: r.unpinnedBlocks,
        ramBytesFreed: BigInt(r.ramBytesFreed),
        ssdBytesFreed: BigInt(r.ssdBytesFreed),
      };
    },

    async *export(req, ctx) {
      served(deps);
      const tenant = namedTenant(req.tenant, "tenant", ctx, tenants);
      const sel = req.blocks ? await blockSelection(req.blocks, "blocks", () => served(deps)) : undefined;
      for await (const data of engine.exportBundle(tenant, sel, ctx.signal)) yield { data };
    },

    import: async (requests: AsyncIterable<ImportRequest>, ctx) => {
      served(deps);
      // The tenant comes from the first message, so it is read before the engine call starts.
      const it = requests[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done) throw invalidField("requests", "send the bundle's bytes");
      const tenant = namedTenant(first.value.tenant, "tenant", ctx, tenants);
      const pieces = async function* () {
        yield first.value.data;
        for (let next = await it.next(); !next.done; next = await it.next()) yield next.value.data;
      };
      const r = await engine.importBundle(tenant, pieces(), ctx.signal);
      return {
        blocks: r.blocks,
        storedBlocks: r.storedBlocks,
        presentBlocks: r.presentBlocks,
        tokens: BigInt(r.tokens),
      };
    },
  });
}
