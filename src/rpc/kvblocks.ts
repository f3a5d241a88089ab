import type { ConnectRouter } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Tier } from "../../gen/kvpark/v1/common_pb.js";
import {
  BlockErrorCode,
  KVBlocksService,
  type GetBlocksResponseSchema,
  type PutBlocksRequest,
} from "../../gen/kvpark/v1/kvblocks_pb.js";
import type {
  BlockErrorCode as CacheBlockErrorCode,
  CacheStats,
  EngineStats,
  PutBlocksReport,
} from "../engine-ipc.js";
import { invalidField, KvparkError } from "../errors.js";
import { adminKey, tenantKey } from "../frontend/auth.js";
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
  };
}

/** kvpark.v1.KVBlocksService: thin translation to the engine's prefix cache. */
export function registerKVBlocks(router: ConnectRouter, deps: RpcDeps): void {
  const { engine } = deps;
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
  });
}
