import { Worker } from "node:worker_threads";

/**
 * Ends this process at once when its parent (the front end) dies, even while the engine's thread is
 * busy in a long MLX step and cannot see the IPC channel close. A dead front end's engine would
 * otherwise compute on for seconds holding the SSD store's lock, and the restarted front end's new
 * engine would find the store locked. Linux has no parent-death signal for Node code, so a worker
 * thread polls the parent pid (it changes when the process is re-parented) and sends SIGKILL: the
 * store is crash-safe, and nobody is left to receive the results of the work in flight.
 */
export function exitWithParent(intervalMs = 50): void {
  const source = `
    const { workerData } = require("node:worker_threads");
    setInterval(() => {
      if (process.ppid !== workerData.ppid) process.kill(process.pid, "SIGKILL");
    }, workerData.intervalMs);
  `;
  const worker = new Worker(source, { eval: true, workerData: { ppid: process.ppid, intervalMs } });
  worker.unref();
}
