// redis-server processes and a Redis Cluster for the shared-tier tests; the benchmark starts its own
// the same way.
export { RedisCluster, RedisServer, freePort, redisCli } from "../../bench/lib/redis";
