// The periodic sweep every replica runs:
// - ends requests past their deadline (acknowledged → expired, pending → failed), claimed
//   in batches with SKIP LOCKED so replicas share the work and each request moves once;
// - tells SMS customers their request failed or expired, one request per transaction
//   (claimed with SKIP LOCKED, the notice flag cleared in the same transaction as the send).
// Web customers learn it from their WatchCodeRequest stream, which the state change wakes.
import type { Kysely } from "kysely";
import type { Registry } from "prom-client";
import { counter } from "../kit/events/metrics.js";
import type { Logger } from "../kit/log.js";
import { smsText } from "./domain/states.js";
import { SmsRejected, type SmsSender } from "./sms.js";
import { claimPendingNotice, clearNotice, endOverdueRequests } from "./store/requests.js";
import type { ProviderDB } from "./store/schema.js";

export interface Sweeper {
  stop(): Promise<void>;
}

export function startSweeper(opts: { db: Kysely<ProviderDB>; sms: SmsSender; intervalMs: number; log: Logger; registry: Registry }): Sweeper {
  const { db, sms } = opts;
  const log = opts.log.child({ component: "sweeper" });
  const ended = counter(opts.registry, "vouch_provider_requests_ended_by_deadline_total", "Code requests ended by the deadline sweep, by final state.", ["state"]);
  const notices = counter(opts.registry, "vouch_provider_notices_sent_total", "SMS telling customers their request failed or expired.", ["outcome"]);

  async function endOverdue() {
    for (;;) {
      const rows = await endOverdueRequests(db, 200);
      for (const r of rows) ended.inc({ state: r.state });
      if (rows.length) log.info({ count: rows.length, ids: rows.slice(0, 10).map((r) => r.id) }, "requests ended at their deadline");
      if (rows.length < 200) return;
    }
  }

  /** Sends one pending notice; false when there is none (or it could not be sent now). */
  async function sendOneNotice(): Promise<boolean> {
    return db.transaction().execute(async (trx) => {
      const r = await claimPendingNotice(trx);
      if (!r) return false;
      const purpose = r.state === "expired" ? "expired" : "failed";
      try {
        await sms.send(trx, { to: r.phoneNumber, body: smsText[purpose](), codeRequestId: r.id, purpose });
        notices.inc({ outcome: "sent" });
      } catch (err) {
        if (!(err instanceof SmsRejected)) throw err; // gateway down: the notice stays pending
        notices.inc({ outcome: "rejected" });
        log.warn({ codeRequestId: r.id, err }, "SMS gateway refused a notice; giving it up");
      }
      await clearNotice(trx, r.id);
      return true;
    });
  }

  let running: Promise<void> = Promise.resolve();
  async function sweep() {
    try {
      await endOverdue();
    } catch (err) {
      log.warn({ err }, "deadline sweep failed; will retry");
    }
    try {
      while (await sendOneNotice()) {
        if (stopping) break;
      }
    } catch (err) {
      log.warn({ err }, "sending notices failed; will retry");
    }
  }

  let stopping = false;
  let timer: NodeJS.Timeout | undefined;
  const loop = () => {
    timer = setTimeout(() => {
      running = sweep().finally(() => {
        if (!stopping) loop();
      });
    }, opts.intervalMs);
  };
  loop();

  return {
    async stop() {
      stopping = true;
      clearTimeout(timer);
      await running;
    },
  };
}
