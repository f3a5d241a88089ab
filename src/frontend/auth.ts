import { timingSafeEqual, createHash } from "node:crypto";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { ConfigError, parseTokens } from "../config.js";

/** The tenant of a request, derived from its bearer token (never from the request body). */
export const tenantKey = createContextKey<string>("", { description: "tenant of the request" });

/** Whether the caller holds an operator's token (--admin-tokens), or authentication is off. */
export const adminKey = createContextKey<boolean>(true, { description: "the caller is an operator" });

/** The tenant name used when authentication is off. */
export const DEFAULT_TENANT = "";

/**
 * The tokens of --auth-tokens (or --admin-tokens, named by `flag`), token → tenant. loadConfig has
 * checked them already (parseTokens), so a ConfigError here means a Config that did not come from it.
 */
export function parseAuthTokens(spec: string, flag = "--auth-tokens"): Map<string, string> {
  const { tokens, problems } = parseTokens(spec, flag);
  if (problems.length) throw new ConfigError(problems);
  return tokens;
}

// Compare digests so the comparison time does not depend on how much of a guessed token is right.
function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** Who a bearer token belongs to: its tenant, and whether it is an operator's. */
export interface Caller {
  tenant: string;
  admin: boolean;
}

/** The configured tokens (--auth-tokens, --admin-tokens), for every API that authenticates. */
export class Authenticator {
  private readonly known: { digest: Buffer; tenant: string; admin: boolean }[];

  constructor(tokens: Map<string, string>, adminTokens: Map<string, string> = new Map()) {
    const entry =
      (admin: boolean) =>
      ([token, tenant]: [string, string]) => ({ digest: digest(token), tenant, admin });
    this.known = [...[...tokens].map(entry(false)), ...[...adminTokens].map(entry(true))];
  }

  /** Whether tokens are configured; without them every caller is the default tenant and an operator. */
  get enabled(): boolean {
    return this.known.length > 0;
  }

  /** The caller a token names, or undefined for a wrong one; compared in constant time. */
  resolve(token: string): Caller | undefined {
    const d = digest(token);
    const entry = this.known.find((k) => timingSafeEqual(k.digest, d));
    return entry && { tenant: entry.tenant, admin: entry.admin };
  }
}

/**
 * Requires `authorization: Bearer <token>` on every call when tokens are configured, and records the
 * token's tenant in the call's context, and whether it is one of the operators' `adminTokens`.
 */
export function authInterceptor(auth: Authenticator): Interceptor {
  return (next) => async (req) => {
    const header = req.header.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match)
      throw new ConnectError(
        "missing bearer token: send metadata authorization: Bearer <token>",
        Code.Unauthenticated,
      );
    const entry = auth.resolve(match[1]);
    if (!entry) throw new ConnectError("invalid bearer token", Code.Unauthenticated);
    req.contextValues.set(tenantKey, entry.tenant);
    req.contextValues.set(adminKey, entry.admin);
    return next(req);
  };
}
