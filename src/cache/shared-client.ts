import { Cluster, Redis } from "ioredis";
import type { SharedTierOptions } from "./shared-types";

/**
 * The ioredis client of the shared tier's addresses: a Redis Cluster for several of them (or
 * `cluster`), else one server. Its errors, and a cluster node's, go to `onError`.
 */
export function redisClient(options: SharedTierOptions, onError: (err: Error) => void): Redis | Cluster {
  const urls = options.urls.map((u) => new URL(u));
  const tls = urls[0].protocol === "rediss:" ? {} : undefined;
  const auth = {
    username: decodeURIComponent(urls[0].username) || undefined,
    password: decodeURIComponent(urls[0].password) || undefined,
  };
  const common = {
    // A command issued while the connection is down fails at once instead of waiting in memory,
    // and one in flight when it drops is failed, not resent: the caller has a time budget.
    maxRetriesPerRequest: 0,
    connectTimeout: Math.max(1000, options.timeoutMs * 4),
    keepAlive: 10_000,
    enableAutoPipelining: true,
    ...auth,
    ...(tls ? { tls } : {}),
  };
  const retry = (times: number) => Math.min(100 * 2 ** Math.min(times, 5), 2000);
  let client: Redis | Cluster;
  if (options.cluster || urls.length > 1) {
    client = new Cluster(
      urls.map((u) => ({ host: u.hostname, port: Number(u.port || 6379) })),
      {
        enableOfflineQueue: false,
        enableAutoPipelining: true,
        clusterRetryStrategy: retry,
        maxRedirections: 4,
        retryDelayOnFailover: 50,
        retryDelayOnClusterDown: 50,
        slotsRefreshTimeout: Math.max(1000, options.timeoutMs * 4),
        redisOptions: common,
      },
    );
    client.on("node error", (err: Error) => onError(err));
  } else {
    const u = urls[0];
    const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
    client = new Redis({
      host: u.hostname,
      port: Number(u.port || 6379),
      db,
      enableOfflineQueue: false,
      retryStrategy: retry,
      ...common,
    });
  }
  // An unhandled "error" event would end the process; Redis' errors are the tier's, not the engine's.
  client.on("error", (err: Error) => onError(err));
  return client;
}
