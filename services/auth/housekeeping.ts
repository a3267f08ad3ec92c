// Periodic work of every auth replica (each step is idempotent, so replicas need no leader):
// - write recent token cutoffs back to Redis, so a Redis that lost its data (restart
//   without persistence, failover) re-admits revoked tokens for at most `resyncEveryMs`;
// - delete sessions that ended a week ago (old request ids are the platform's to prune).
import type { Kysely } from "kysely";
import type { Logger } from "../kit/log.js";
import type { Redis } from "../kit/redis.js";
import { MAX_ACCESS_TOKEN_TTL_MS, revokeTokensIssuedBefore } from "../kit/revocation.js";
import type { AuthDB } from "./store/schema.js";
import { pruneSessions } from "./store/sessions.js";
import { recentRevocations } from "./store/users.js";

export interface HousekeepingOptions {
  db: Kysely<AuthDB>;
  redis: Redis;
  log: Logger;
  resyncEveryMs?: number;
  pruneEveryMs?: number;
}

const DAY_MS = 86_400_000;

/** Re-asserts every cutoff that may still matter (tokens issued before it may not have expired). */
export async function resyncRevocations(db: Kysely<AuthDB>, redis: Redis): Promise<number> {
  const since = new Date(Date.now() - MAX_ACCESS_TOKEN_TTL_MS - 60_000);
  const rows = await recentRevocations(db, since);
  for (const { id, cutoff } of rows) await revokeTokensIssuedBefore(redis, id, cutoff);
  return rows.length;
}

export function startHousekeeping(opts: HousekeepingOptions): { stop(): Promise<void> } {
  const { db, redis, log, resyncEveryMs = 30_000, pruneEveryMs = 3_600_000 } = opts;
  let failing = false;
  const resync = async () => {
    try {
      await resyncRevocations(db, redis);
      if (failing) log.info("token cutoffs written back to redis again");
      failing = false;
    } catch (err) {
      if (!failing) log.warn({ err }, "cannot write token cutoffs back to redis; will retry");
      failing = true;
    }
  };
  const prune = async () => {
    try {
      const sessions = await pruneSessions(db, 7 * DAY_MS);
      if (sessions) log.debug({ sessions }, "pruned ended sessions");
    } catch (err) {
      log.warn({ err }, "housekeeping prune failed; will retry");
    }
  };
  // One step at a time, and stop() waits for the running one (pools close right after).
  let running: Promise<void> = resync();
  const run = (step: () => Promise<void>) => () => void (running = running.then(step));
  const timers = [setInterval(run(resync), resyncEveryMs), setInterval(run(prune), pruneEveryMs)];
  for (const t of timers) t.unref();
  return {
    async stop() {
      for (const t of timers) clearInterval(t);
      await running;
    },
  };
}
