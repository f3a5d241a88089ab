import { KvparkError } from "../errors";
import { Admission } from "./admission";

/** The error `enter` throws, or undefined when it admits the call. */
function refusal(admission: Admission, tenant: string): KvparkError | undefined {
  try {
    admission.enter(tenant);
    return undefined;
  } catch (err) {
    return err as KvparkError;
  }
}

const SERVER_BUSY = "server busy: 3 generation requests in flight (--requests-max); retry later";
const TENANT_BUSY =
  "tenant busy: this tenant already has 2 generation requests in flight, its limit (--tenant-requests-max); retry when one of them has ended";

describe("Admission", () => {
  it("refuses a call beyond --requests-max, whoever asks, and admits one again when a call leaves", () => {
    const admission = new Admission(3);
    const leaves = [admission.enter("a"), admission.enter("a"), admission.enter("b")];
    expect(admission.active).toBe(3);
    for (const tenant of ["a", "b", "c"]) {
      const err = refusal(admission, tenant);
      expect([err?.code, err?.message]).toEqual(["RESOURCE_EXHAUSTED", SERVER_BUSY]);
    }
    leaves[0]();
    expect(refusal(admission, "c")).toBeUndefined();
    expect([admission.active, admission.activeOf("a"), admission.activeOf("c")]).toEqual([3, 1, 1]);
  });

  it("refuses a tenant's call beyond --tenant-requests-max while other tenants are admitted", () => {
    const admission = new Admission(3, 2);
    admission.enter("a");
    const leave = admission.enter("a");
    const err = refusal(admission, "a");
    expect([err?.code, err?.message]).toEqual(["RESOURCE_EXHAUSTED", TENANT_BUSY]);
    expect(refusal(admission, "b")).toBeUndefined();
    expect([admission.active, admission.activeOf("a"), admission.activeOf("b")]).toEqual([3, 2, 1]);
    // Past both limits the tenant's own is the one named.
    expect(refusal(admission, "a")?.message).toBe(TENANT_BUSY);
    expect(refusal(admission, "b")?.message).toBe(SERVER_BUSY);
    leave();
    expect(refusal(admission, "a")).toBeUndefined();
    expect(admission.activeOf("a")).toBe(2);
  });

  it("counts every unauthenticated caller as the one empty tenant", () => {
    const admission = new Admission(8, 1);
    admission.enter("");
    expect(refusal(admission, "")?.message).toMatch(/^tenant busy: /);
    expect(admission.activeOf("")).toBe(1);
  });

  it("lets a call leave once, however often its leave function runs", () => {
    const admission = new Admission(2, 2);
    const first = admission.enter("a");
    admission.enter("a");
    first();
    first();
    expect([admission.active, admission.activeOf("a")]).toEqual([1, 1]);
  });

  it("forgets a tenant with no call in flight", () => {
    const admission = new Admission(2, 1);
    const leave = admission.enter("a");
    leave();
    expect([admission.active, admission.activeOf("a")]).toEqual([0, 0]);
    expect((admission as unknown as { byTenant: Map<string, number> }).byTenant.size).toBe(0);
  });

  it("puts no limit on a tenant but --requests-max when --tenant-requests-max is 0", () => {
    const admission = new Admission(5, 0);
    for (let i = 0; i < 5; i++) admission.enter("a");
    expect(refusal(admission, "a")?.message).toBe(
      "server busy: 5 generation requests in flight (--requests-max); retry later",
    );
  });
});
