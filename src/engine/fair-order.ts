/**
 * Orders jobs for a step: tenants take turns (rotated by `turn`), and within a tenant its jobs do
 * (rotated too), interleaved: each tenant's first, then each tenant's second, and so on.
 */
export function fairOrder<J extends { tenant: string }>(jobs: J[], turn: number): J[] {
  const byTenant = new Map<string, J[]>();
  for (const job of jobs) byTenant.set(job.tenant, [...(byTenant.get(job.tenant) ?? []), job]);
  const rotate = <T>(list: T[]): T[] => {
    const k = turn % list.length;
    return [...list.slice(k), ...list.slice(0, k)];
  };
  const queues = rotate([...byTenant.values()]).map(rotate);
  const out: J[] = [];
  for (let i = 0; out.length < jobs.length; i++) for (const q of queues) if (i < q.length) out.push(q[i]);
  return out;
}
