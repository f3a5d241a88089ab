import { KvparkError } from "../errors.js";

/**
 * Bounds the Generate/PrefillStream calls in flight: all of them together (--requests-max) and each
 * tenant's (--tenant-requests-max), so that one tenant cannot hold every slot.
 */
export class Admission {
  /** Calls in flight, every tenant's together. */
  active = 0;
  private readonly byTenant = new Map<string, number>();

  constructor(
    private readonly max: number,
    /** The calls one tenant may have in flight; 0 puts no limit on a tenant but `max`. */
    private readonly tenantMax = 0,
  ) {}

  /** Calls in flight of one tenant. */
  activeOf(tenant: string): number {
    return this.byTenant.get(tenant) ?? 0;
  }

  /**
   * Admits a call of `tenant` ("" when authentication is off) or refuses it with RESOURCE_EXHAUSTED;
   * the returned function lets it leave (once).
   */
  enter(tenant: string): () => void {
    const mine = this.activeOf(tenant);
    // The tenant's own limit is named first: it is the one its client can do something about.
    if (this.tenantMax > 0 && mine >= this.tenantMax) {
      throw new KvparkError(
        "RESOURCE_EXHAUSTED",
        `tenant busy: this tenant already has ${this.tenantMax} generation requests in flight, its limit (--tenant-requests-max); retry when one of them has ended`,
      );
    }
    if (this.active >= this.max) {
      throw new KvparkError(
        "RESOURCE_EXHAUSTED",
        `server busy: ${this.max} generation requests in flight (--requests-max); retry later`,
      );
    }
    this.active++;
    this.byTenant.set(tenant, mine + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.active--;
      const now = this.activeOf(tenant) - 1;
      // Tenants without calls in flight leave no entry behind, so the map stays as small as the load.
      if (now > 0) this.byTenant.set(tenant, now);
      else this.byTenant.delete(tenant);
    };
  }
}
