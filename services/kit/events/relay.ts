// The outbox relay: publishes committed outbox rows to JetStream, then marks them.
//
// Guarantees, and what gives each one:
// - never lost: a row is marked published only after its PubAck; until then it stays and
//   is retried (capped exponential backoff while NATS or Postgres is unreachable).
// - never published twice by two replicas: rows are claimed with FOR UPDATE SKIP LOCKED
//   in the transaction that marks them.
// - never duplicated in the stream: Nats-Msg-Id = event id, so a re-publish after a crash
//   between PubAck and commit (or after a PubAck lost on the wire) is dropped by the broker
//   within its duplicate window (2 min); consumers dedupe by event id past that.
// - prompt: LISTEN vouch_outbox wakes the relay on commit; a poll every pollMs is the
//   safety net for a lost listener connection.
// - batched without waiting when idle: batches start at most every batchIntervalMs. A commit
//   after a quiet spell wakes the relay at once; commits that come while the last batch is
//   younger than the interval wait for it to pass and go out together. Under load, one
//   claim-publish-mark transaction carries an interval's worth of events instead of one or
//   two (bench/auth-login.ts: 2.4 Postgres transactions per login instead of 2.8 at 10 ms).
// - cheap: that transaction is two round trips on the relay's own connection, not four
//   (`BEGIN; SELECT … FOR UPDATE SKIP LOCKED`, then `UPDATE …; COMMIT`, each one message of
//   the simple protocol). At a few events per second nearly every event is a batch of its
//   own, so this halves what the relay adds to each event's cost.
import { headers as natsHeaders, type NatsConnection } from "nats";
import pg from "pg";
import type { Kysely } from "kysely";
import type { Registry } from "prom-client";
import { assertIdentifier, createPool } from "../db.js";
import type { Logger } from "../log.js";
import { counter, gauge, histogram, LATENCY_BUCKETS } from "./metrics.js";
import { OUTBOX_CHANNEL, type EventTables } from "./outbox.js";

export interface OutboxRelayOptions {
  db: Kysely<any>;
  /** For the dedicated LISTEN connection (the pool's connections come and go). */
  databaseUrl: string;
  /** The schema whose outbox this relay drains. */
  schema: string;
  nc: NatsConnection;
  /** Prepended to each row's relative subject: `vouch` + `auth.user_logged_in`. */
  subjectPrefix: string;
  log: Logger;
  registry: Registry;
  /** Safety-net poll interval (default 1 s). */
  pollMs?: number;
  /** Shortest time between the starts of two batches woken by NOTIFY (default 50 ms); a backlog drains without pause. */
  batchIntervalMs?: number;
  /** Rows claimed per transaction (default 100). */
  batchSize?: number;
  /** How long to wait for each PubAck (default 5 s). */
  publishTimeoutMs?: number;
  /** Backoff while publishing fails: doubles from minBackoffMs up to maxBackoffMs (defaults 250 ms, 30 s). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Published rows older than this are deleted (default 7 days; 0 keeps them forever). */
  retainPublishedMs?: number;
}

export interface OutboxRelay {
  /** Finishes the in-flight batch, stops polling and closes the listener. */
  stop(): Promise<void>;
}

interface ClaimedRow {
  id: string;
  subject: string;
  payload: Uint8Array;
  headers: Record<string, string>;
  created_at: Date;
}

export function startOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const schema = assertIdentifier(opts.schema, "schema");
  const db = (opts.db as Kysely<EventTables>).withSchema(schema);
  const log = opts.log.child({ component: "outbox-relay", schema });
  const pollMs = opts.pollMs ?? 1_000;
  const batchIntervalMs = opts.batchIntervalMs ?? 50;
  const batchSize = opts.batchSize ?? 100;
  const publishTimeoutMs = opts.publishTimeoutMs ?? 5_000;
  const minBackoffMs = opts.minBackoffMs ?? 250;
  const maxBackoffMs = opts.maxBackoffMs ?? 30_000;
  const retainPublishedMs = opts.retainPublishedMs ?? 7 * 24 * 3600_000;
  const js = opts.nc.jetstream();

  const published = counter(opts.registry, "vouch_outbox_published_total", "Outbox events published to JetStream (PubAck received).", ["schema"]);
  const batches = counter(opts.registry, "vouch_outbox_batches_total", "Outbox claim-publish-mark transactions that found events.", ["schema"]);
  const failures = counter(opts.registry, "vouch_outbox_publish_failures_total", "Outbox publish attempts that failed and will be retried.", ["schema"]);
  const lag = histogram(opts.registry, "vouch_outbox_lag_seconds", "Time from enqueue to PubAck of an outbox event.", ["schema"], LATENCY_BUCKETS);
  const oldestPending = gauge(opts.registry, "vouch_outbox_oldest_pending_seconds", "Age of the oldest unpublished outbox event (0 when empty).", ["schema"]);
  const labels = { schema };

  let stopping = false;
  let pendingWake = false;
  const sleepers = new Set<{ wakeable: boolean; finish: () => void }>();
  const wake = () => {
    pendingWake = true;
    for (const s of sleepers) if (s.wakeable) s.finish();
  };
  // A notification wakes the relay at once if the last batch began an interval ago or more;
  // otherwise it sets the timer for the interval's end, and the others ride along.
  let lastBatchAt = -Infinity;
  let wakeTimer: NodeJS.Timeout | undefined;
  const wakeSoon = () => {
    if (wakeTimer) return;
    const wait = lastBatchAt + batchIntervalMs - performance.now();
    if (wait <= 0) return wake();
    wakeTimer = setTimeout(() => {
      wakeTimer = undefined;
      wake();
    }, wait);
  };
  /** Resolves after ms, on stop, or (if wakeable) on a notification, including one that came in before. */
  const sleep = (ms: number, wakeable: boolean) =>
    new Promise<void>((resolve) => {
      if (stopping || (wakeable && pendingWake)) return resolve();
      const sleeper = {
        wakeable,
        finish() {
          clearTimeout(timer);
          sleepers.delete(sleeper);
          resolve();
        },
      };
      const timer = setTimeout(sleeper.finish, ms);
      sleepers.add(sleeper);
    });

  // The claim-publish-mark transaction's own connection (a pool of one, so a connection that
  // broke is replaced): its statements go several to a message, which needs a raw client.
  const claims = createPool({ url: opts.databaseUrl, max: 1, applicationName: `vouch-${schema}-outbox-relay`, log });
  const outbox = `${schema}.outbox`;
  const claimSql =
    `BEGIN; SELECT id, subject, payload, headers, created_at FROM ${outbox} WHERE published_at IS NULL ` +
    `ORDER BY created_at, id LIMIT ${batchSize} FOR UPDATE SKIP LOCKED`;

  async function claimPublishMark() {
    const client = await claims.connect();
    // A session in an unknown state (a transaction open, a broken socket) is not given back:
    // closing it rolls back and releases the claimed rows.
    let broken: Error | undefined;
    try {
      // Several statements in one simple-protocol message take no parameters. Nothing here
      // comes from outside: the table name is an identifier checked above, the batch size a
      // number, the ids this outbox's own, quoted by pg.
      const [, claimed] = (await client.query(claimSql)) as unknown as pg.QueryResult<ClaimedRow>[];
      const rows = claimed.rows;
      if (rows.length === 0) {
        await client.query("COMMIT");
        return { claimed: 0 };
      }
      // Publish the batch pipelined; one connection keeps them in order on the wire.
      const results = await Promise.allSettled(
        rows.map((row) => {
          const h = natsHeaders();
          for (const [k, v] of Object.entries(row.headers ?? {})) h.set(k, String(v));
          return js.publish(`${opts.subjectPrefix}.${row.subject}`, row.payload, { msgID: row.id, headers: h, timeout: publishTimeoutMs });
        }),
      );
      const ok = rows.filter((_, i) => results[i].status === "fulfilled");
      const failed = rows.filter((_, i) => results[i].status === "rejected");
      const ids = (batch: ClaimedRow[]) => batch.map((r) => client.escapeLiteral(r.id)).join(", ");
      await client.query(
        [
          ok.length && `UPDATE ${outbox} SET published_at = clock_timestamp() WHERE id IN (${ids(ok)})`,
          failed.length && `UPDATE ${outbox} SET attempts = attempts + 1 WHERE id IN (${ids(failed)})`,
          "COMMIT",
        ]
          .filter(Boolean)
          .join("; "),
      );
      const firstError = results.find((r): r is PromiseRejectedResult => r.status === "rejected")?.reason;
      return { claimed: rows.length, ok, failedCount: failed.length, error: firstError };
    } catch (err) {
      broken = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      client.release(broken);
    }
  }

  async function publishBatch(): Promise<{ claimed: number; error?: unknown }> {
    pendingWake = false;
    lastBatchAt = performance.now();
    const outcome = await claimPublishMark();
    // Metrics only after the marks are committed.
    if ("ok" in outcome && outcome.ok) {
      const now = Date.now();
      published.inc(labels, outcome.ok.length);
      batches.inc(labels);
      for (const row of outcome.ok) lag.observe(labels, Math.max(0, now - row.created_at.getTime()) / 1000);
      if (outcome.failedCount) failures.inc(labels, outcome.failedCount);
    }
    return outcome;
  }

  let lastGaugeAt = 0;
  async function refreshOldestPending(force = false) {
    if (!force && Date.now() - lastGaugeAt < 1_000) return;
    lastGaugeAt = Date.now();
    try {
      const row = await db
        .selectFrom("outbox")
        .select((eb) => eb.fn.min("created_at").as("oldest"))
        .where("published_at", "is", null)
        .executeTakeFirst();
      const oldest = row?.oldest as Date | null | undefined;
      oldestPending.set(labels, oldest ? Math.max(0, Date.now() - new Date(oldest).getTime()) / 1000 : 0);
    } catch {
      // Postgres is unreachable: the loop already reports it.
    }
  }

  let lastPruneAt = Date.now();
  async function prunePublished() {
    if (retainPublishedMs <= 0 || Date.now() - lastPruneAt < 10 * 60_000) return;
    lastPruneAt = Date.now();
    const cutoff = new Date(Date.now() - retainPublishedMs);
    const res = await db
      .deleteFrom("outbox")
      .where("id", "in", (eb) =>
        eb.selectFrom("outbox").select("id").where("published_at", "<", cutoff).limit(10_000),
      )
      .executeTakeFirst();
    if (res.numDeletedRows > 0n) log.debug({ deleted: Number(res.numDeletedRows) }, "pruned published outbox rows");
  }

  async function run() {
    let failing = 0;
    let outageSince = 0;
    while (!stopping) {
      let full = false;
      try {
        // While recovering, probe the connection first: publishes made while disconnected
        // would only pile up in the client's reconnect buffer.
        if (failing) await opts.nc.rtt();
        const { claimed, error } = await publishBatch();
        if (error) throw error;
        full = claimed === batchSize;
        if (failing) {
          log.info({ downMs: Date.now() - outageSince, attempts: failing }, "outbox relay recovered; publishing again");
          failing = 0;
        }
        await prunePublished();
      } catch (err) {
        if (!failing) {
          outageSince = Date.now();
          log.warn({ err }, "outbox relay cannot publish; events stay in the outbox and will be retried");
        }
        failing++;
        await refreshOldestPending(true);
        await sleep(Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(failing - 1, 20)), false);
        continue;
      }
      if (full) {
        await refreshOldestPending(false);
      } else {
        // Drained everything committed before the claim: nothing is pending that a query
        // would see for long (a later commit's NOTIFY is already waking the next batch), so
        // the gauge drops to 0 without a query per batch.
        oldestPending.set(labels, 0);
        await sleep(pollMs, true);
      }
    }
  }

  // The listener: one dedicated session, reconnected whenever it drops. Missing a NOTIFY
  // costs at most pollMs, so its failures are logged once and otherwise ignored.
  let listener: pg.Client | undefined;
  async function listen() {
    let failing = 0;
    while (!stopping) {
      const client = new pg.Client({ connectionString: opts.databaseUrl, application_name: `vouch-${schema}-outbox-listener` });
      const closed = new Promise<unknown>((resolve) => {
        client.on("error", resolve);
        client.on("end", () => resolve(undefined));
      });
      client.on("notification", (n) => {
        if (n.channel === OUTBOX_CHANNEL && n.payload === schema) wakeSoon();
      });
      try {
        await client.connect();
        await client.query(`LISTEN ${OUTBOX_CHANNEL}`);
        if (stopping) break;
        listener = client;
        if (failing) {
          log.info("outbox listener reconnected");
          wake(); // rows committed while we were deaf
        }
        failing = 0;
        const err = await closed;
        if (!stopping) throw err ?? new Error("listener connection ended");
      } catch (err) {
        if (!failing) log.warn({ err }, "outbox listener lost; polling every pollMs until it is back");
        failing++;
      } finally {
        listener = undefined;
        await client.end().catch(() => {});
      }
      await sleep(Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(failing, 20)), false);
    }
  }

  const running = run().catch((err) => log.error({ err }, "outbox relay loop crashed"));
  const listening = listen().catch((err) => log.error({ err }, "outbox listener loop crashed"));
  log.debug({ subjectPrefix: opts.subjectPrefix }, "outbox relay started");

  let stopped: Promise<void> | undefined;
  return {
    stop() {
      stopped ??= (async () => {
        stopping = true;
        clearTimeout(wakeTimer);
        for (const s of sleepers) s.finish();
        await listener?.end().catch(() => {});
        await Promise.all([running, listening]);
        await claims.end().catch(() => {});
        log.debug("outbox relay stopped");
      })();
      return stopped;
    },
  };
}
