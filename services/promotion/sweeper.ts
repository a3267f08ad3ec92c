// The periodic sweep, in every replica (each step is a conditional update or an idempotent
// call, so replicas sweeping together do the work once): ends campaigns past their end
// time, issues vouchers of grants still waiting for one (the reconciliation: "a grant never
// stays without its voucher"), expires top-up orders past their deadline and releases their
// vouchers, and resumes orders a crash left mid-saga.
import type { Logger } from "../kit/log.js";
import type { Campaigns } from "./campaigns.js";
import type { Grants } from "./grants.js";
import type { TopUps } from "./topups.js";

export interface Sweeper {
  /** Runs one sweep now (tests); resolves when it is done. */
  sweep(): Promise<void>;
  stop(): Promise<void>;
}

export function startSweeper(deps: { campaigns: Campaigns; grants: Grants; topUps: TopUps; intervalMs: number; reconcileAfterMs: number; log: Logger }): Sweeper {
  const log = deps.log.child({ component: "sweeper" });
  let stopping = false;
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;

  const steps: [string, () => Promise<unknown>][] = [
    ["end campaigns", () => deps.campaigns.endOverdue()],
    ["expire top-ups", () => deps.topUps.expire()],
    ["resume top-ups", () => deps.topUps.resume(Math.min(deps.reconcileAfterMs, 5_000))],
    ["reconcile grants", () => deps.grants.reconcile(deps.reconcileAfterMs)],
  ];

  async function sweepOnce() {
    for (const [name, step] of steps) {
      if (stopping) return;
      try {
        await step();
      } catch (err) {
        log.warn({ err, step: name }, "sweep step failed; next sweep retries");
      }
    }
  }

  const sweep = () => (running ??= sweepOnce().finally(() => (running = undefined)));

  const schedule = () => {
    if (stopping) return;
    timer = setTimeout(() => void sweep().finally(schedule), deps.intervalMs);
  };
  schedule();

  return {
    sweep,
    async stop() {
      stopping = true;
      clearTimeout(timer);
      await running;
    },
  };
}
