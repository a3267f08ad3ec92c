// The top-up scheduler. Every replica runs one, but only the leader works: leadership is
// a Postgres session advisory lock held on a dedicated connection, so exactly one replica
// holds it, and when that replica dies (or its connection drops) the lock goes with the
// session and another replica takes over at its next attempt. The work itself is safe
// anyway (one auto top-up per book is a unique index), the lock keeps it from being done
// N times over.
//
// Each tick the leader: starts a top-up job for every active book whose free codes fell
// below its threshold; restarts jobs whose worker died. (Old request ids are pruned by the
// platform on every replica: a delete by age needs no leader.)
import pg from "pg";
import type { Logger } from "../kit/log.js";
import { advisoryLockKey } from "../kit/migrate.js";
import type { Books } from "./books.js";
import type { Kysely } from "kysely";
import type { VoucherDB } from "./store/schema.js";
import type { VoucherSettings } from "./settings.js";

export interface SchedulerOptions {
  databaseUrl: string;
  schema: string;
  db: Kysely<VoucherDB>;
  books: Books;
  settings: VoucherSettings;
  log: Logger;
}

export interface Scheduler {
  isLeader(): boolean;
  /** Ticks this replica has run as leader. */
  ticks(): number;
  stop(): Promise<void>;
}

export function startScheduler(opts: SchedulerOptions): Scheduler {
  const log = opts.log.child({ component: "top-up-scheduler" });
  const key = advisoryLockKey(`vouch.voucher.scheduler.${opts.schema}`);
  const interval = opts.settings.schedulerIntervalMs;
  let client: pg.Client | undefined;
  let leader = false;
  let ticks = 0;
  let stopping = false;
  let timer: NodeJS.Timeout | undefined;
  let wake: (() => void) | undefined;

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, ms);
    });

  async function connect(): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: opts.databaseUrl, application_name: `vouch-${opts.schema}-scheduler` });
    c.on("error", (err) => {
      if (leader) log.warn({ err }, "scheduler connection lost; leadership released");
      leader = false;
      client = undefined;
    });
    await c.connect();
    return c;
  }

  async function tryLead(): Promise<boolean> {
    client ??= await connect();
    const { rows } = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1::bigint) AS ok", [key]);
    return rows[0].ok;
  }

  async function tick() {
    ticks++;
    const started = await opts.books.topUp();
    for (const job of started) log.info({ bookId: job.bookId, jobId: job.id, count: job.requestedCount }, "auto top-up started");
    const restarted = await opts.books.restartAbandonedJobs(opts.settings.jobLeaseMs);
    for (const job of restarted) log.warn({ jobId: job.id, bookId: job.bookId }, "generation job restarted: its worker stopped");
  }

  const loop = (async () => {
    while (!stopping) {
      try {
        if (!leader) {
          leader = await tryLead();
          if (leader) log.info("this replica leads the top-up scheduler");
        }
        if (leader) await tick();
      } catch (err) {
        log.warn({ err }, "scheduler tick failed");
      }
      if (!stopping) await sleep(interval);
    }
  })();

  return {
    isLeader: () => leader,
    ticks: () => ticks,
    async stop() {
      stopping = true;
      clearTimeout(timer);
      wake?.();
      await loop;
      leader = false;
      // Ending the session releases the advisory lock.
      await client?.end().catch(() => {});
    },
  };
}
