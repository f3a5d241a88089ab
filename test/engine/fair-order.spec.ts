import { fairOrder } from "../../src/engine/fair-order";

const job = (tenant: string, id: number) => ({ tenant, id });
const ids = (jobs: { id: number }[]) => jobs.map((j) => j.id);

describe("fairOrder", () => {
  test("tenants take turns, however many jobs each has", () => {
    // Tenant a opened six jobs before b's one: b's job still comes second, not seventh.
    const jobs = [1, 2, 3, 4, 5, 6].map((id) => job("a", id)).concat(job("b", 7));
    expect(ids(fairOrder(jobs, 0))).toEqual([1, 7, 2, 3, 4, 5, 6]);
    // The next turn starts with the other tenant, and with a's next job.
    expect(ids(fairOrder(jobs, 1))).toEqual([7, 2, 3, 4, 5, 6, 1]);
  });

  test("a tenant's jobs take turns too, so none waits behind a long one forever", () => {
    const jobs = [job("a", 1), job("a", 2), job("a", 3)];
    const firsts = [0, 1, 2, 3].map((turn) => fairOrder(jobs, turn)[0].id);
    expect(firsts).toEqual([1, 2, 3, 1]);
  });

  test("every job appears once, in each turn", () => {
    const jobs = [job("a", 1), job("b", 2), job("c", 3), job("a", 4), job("b", 5)];
    for (let turn = 0; turn < 7; turn++) {
      expect(ids(fairOrder(jobs, turn)).sort()).toEqual([1, 2, 3, 4, 5]);
    }
    expect(fairOrder([], 3)).toEqual([]);
  });
});
