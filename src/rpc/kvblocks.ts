import type { ConnectRouter } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { PinKind, Tier } from "../../gen/kvpark/v1/common_pb.js";
import {
  BlockErrorCode,
  KVBlocksService,
  type BlockSelector,
  type GetBlocksResponseSchema,
  type PutBlocksRequest,
} from "../../gen/kvpark/v1/kvblocks_pb.js";
import { tenantKey } from "../auth.js";
import type { BlockErrorCode as CacheBlockErrorCode, CacheStats, KVBlockRecord } from "../cache/index.js";
import type { BlockSelection, PinHint } from "../engine/protocol.js";
import { invalidField, KvparkError, type ErrorCode } from "../errors.js";
import { GetBlocksTrace, traceLookup, tracePin, tracePutBlocks, traceUnpin } from "../telemetry/index.js";
import { served, type InferenceDeps } from "./inference.js";
import { promptTokens } from "./prompt.js";

const KEY_BYTES = 32;
const KEYS_MAX = 4096;

type LookupResult = {
  tokens: number;
  ramTokens: number;
  ssdTokens: number;
  blocks: { key: Uint8Array; tier: "ram" | "ssd"; start: number; tokens: number }[];
};
type GetItem =
  | { key: Uint8Array; block: KVBlockRecord; tier: "ram" | "ssd" }
  | { key: Uint8Array; error: { code: CacheBlockErrorCode; message: string } };
type PutResult = {
  accepted: number;
  rejected: { index: number; key: Uint8Array; code: CacheBlockErrorCode; message: string }[];
};
type PinResult = {
  pinnedBlocks: number;
  missingKeys: Uint8Array[];
  hardPinnedBytes: number;
  hardPinQuotaBytes: number;
};

/** The status a refused block maps to when a whole PutBlocks call is refused. */
const rejectionStatus: Partial<Record<CacheBlockErrorCode, ErrorCode>> = {
  MODEL_MISMATCH: "FAILED_PRECONDITION",
  PARENT_MISSING: "FAILED_PRECONDITION",
  CAPACITY: "RESOURCE_EXHAUSTED",
};

function blockErrorCode(code: CacheBlockErrorCode): BlockErrorCode {
  return BlockErrorCode[code as keyof typeof BlockErrorCode] ?? BlockErrorCode.UNSPECIFIED;
}

function checkKeys(keys: readonly Uint8Array[], field: string): void {
  if (keys.length === 0) throw invalidField(field, "must hold at least one key");
  if (keys.length > KEYS_MAX)
    throw invalidField(field, `at most ${KEYS_MAX} keys per call, got ${keys.length}`);
  const bad = keys.findIndex((k) => k.length !== KEY_BYTES);
  if (bad >= 0)
    throw invalidField(`${field}[${bad}]`, `a block key has ${KEY_BYTES} bytes, got ${keys[bad].length}`);
}

function selection(deps: InferenceDeps, sel: BlockSelector | undefined, field: string): BlockSelection {
  const target = sel?.target;
  if (!target || target.case === undefined) throw invalidField(field, "required: set keys or prompt");
  if (target.case === "keys") {
    checkKeys(target.value.keys, `${field}.keys.keys`);
    return { keys: target.value.keys.map((k) => Buffer.from(k)) };
  }
  const { info, tokenizer } = served(deps);
  return { tokens: promptTokens(target.value, `${field}.prompt`, tokenizer, info) };
}

function tier(t: "ram" | "ssd"): Tier {
  return t === "ram" ? Tier.RAM : Tier.SSD;
}

function stats(s: CacheStats) {
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
  };
}

/** kvpark.v1.KVBlocksService: thin translation to the engine's prefix cache. */
export function registerKVBlocks(router: ConnectRouter, deps: InferenceDeps): void {
  const { engine } = deps;
  router.service(KVBlocksService, {
    lookup: async (req, ctx) => {
      const { info, tokenizer } = served(deps);
      const tokens = promptTokens(req.prompt, "prompt", tokenizer, info);
      const r = await engine.kv<LookupResult>(
        ctx.values.get(tenantKey),
        { op: "lookup", tokens },
        ctx.signal,
      );
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
        const item = ev.item as GetItem;
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
      ctx.signal.addEventListener("abort", () => abort.abort(ctx.signal.reason), { once: true });
      const call = engine.call(
        (id) => ({ type: "kv", id, tenant: ctx.values.get(tenantKey), op: "putBlocks" }),
        abort.signal,
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
      let result: PutResult | undefined;
      for await (const ev of call.events) if (ev.type === "kv-result") result = ev.result as PutResult;
      if (!result) throw new KvparkError("INTERNAL", "the engine ended PutBlocks without a result");
      tracePutBlocks(ctx, { blocks: index, bytes }, result);
      if (index === 0) throw invalidField("requests", "send at least one block");
      // When nothing was stored, the call itself fails with the first reason, so that callers that
      // only look at the status learn why; partial success returns the per-block reasons.
      if (result.accepted === 0 && result.rejected.length > 0) {
        const first = result.rejected[0];
        throw new KvparkError(
          rejectionStatus[first.code] ?? "INVALID_ARGUMENT",
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
      const sel = selection(deps, req.blocks, "blocks");
      let kind: PinHint;
      if (req.kind === PinKind.HARD) {
        if (req.ttlSeconds) throw invalidField("ttl_seconds", "a hard pin has no time to live");
        kind = { kind: "hard" };
      } else if (req.kind === PinKind.SOFT) {
        kind = { kind: "soft", ttlMs: (req.ttlSeconds || deps.config.softPinTtlSeconds) * 1000 };
      } else throw invalidField("kind", "required: PIN_KIND_SOFT or PIN_KIND_HARD");
      const r = await engine.kv<PinResult>(
        ctx.values.get(tenantKey),
        { op: "pin", selection: sel, kind },
        ctx.signal,
      );
      tracePin(ctx, kind.kind, r);
      return {
        pinnedBlocks: r.pinnedBlocks,
        missingKeys: r.missingKeys,
        hardPinnedBytes: BigInt(r.hardPinnedBytes),
        hardPinQuotaBytes: BigInt(r.hardPinQuotaBytes),
      };
    },

    unpin: async (req, ctx) => {
      const sel = selection(deps, req.blocks, "blocks");
      const r = await engine.kv<{ unpinnedBlocks: number }>(
        ctx.values.get(tenantKey),
        { op: "unpin", selection: sel },
        ctx.signal,
      );
      traceUnpin(ctx, r.unpinnedBlocks);
      return r;
    },

    stats: async (_req, ctx) => {
      served(deps);
      return stats(await engine.kv<CacheStats>(ctx.values.get(tenantKey), { op: "stats" }, ctx.signal));
    },
  });
}
