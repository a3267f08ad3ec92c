// The event plumbing against the real Postgres and NATS: outbox → relay → JetStream →
// consumer. Each test has its own schema (so its own outbox/inbox tables and NOTIFY
// payload) and its own stream; NATS outages happen on a private nats-server.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { StringValueSchema } from "@bufbuild/protobuf/wkt";
import { sql, type Generated, type Kysely } from "kysely";
import { headers as natsHeaders, type NatsConnection } from "nats";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import pg from "pg";
import { Registry } from "prom-client";
import { createDb } from "../db.js";
import {
  connectNats,
  deadLetterSubject,
  enqueueEvent,
  ensureStream,
  outboxMigration,
  retryLater,
  startConsumer,
  startOutboxRelay,
  type EventConsumer,
  type EventTables,
  type OutboxRelay,
} from "../events/index.js";
import { createLogger } from "../log.js";
import { runMigrations } from "../migrate.js";
import { createTestDatabase, deleteStream, startPrivateNats, testEventNames, waitFor, type PrivateNats, type TestDatabase } from "../testing.js";

const log = createLogger("kit-events-test", process.env.LOG_LEVEL ?? "silent");
const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";

interface EffectsTable {
  id: Generated<number>;
  event_id: string;
  value: string;
}
interface DB extends EventTables {
  effects: EffectsTable;
}

let testDb: TestDatabase;
let nc: NatsConnection;
const cleanups: (() => Promise<unknown>)[] = [];
/** Registers teardown, run in reverse order in `after` (and so also when a test fails). */
function defer<T>(value: T, cleanup: (v: T) => Promise<unknown>): T {
  cleanups.push(() => cleanup(value));
  return value;
}

before(async () => {
  testDb = await createTestDatabase("kit_events");
  nc = await connectNats(NATS_URL, log, { name: "kit-events-test" });
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch((err) => console.error("cleanup failed:", err));
  await nc?.close();
  await testDb?.drop();
});

/** A service of our own: schema with the outbox tables and an `effects` table whose rows count handler runs. */
async function freshService(label: string) {
  const schema = `svc_${label}`;
  const db = defer(createDb<DB>({ url: testDb.url, schema, max: 5, log }), (d) => d.destroy());
  await runMigrations(db, {
    schema,
    log,
    migrations: {
      "0000_events": outboxMigration,
      "0001_effects": {
        up: async (d) => {
          // No unique key on purpose: a second run of an effect must show up as a second row.
          await sql`CREATE TABLE effects (id serial PRIMARY KEY, event_id text NOT NULL, value text NOT NULL)`.execute(d);
        },
      },
    },
  });
  return { schema, db };
}

async function freshStream(label: string, conn = nc, duplicateWindowMs?: number) {
  const names = testEventNames(label);
  await ensureStream(conn, { name: names.stream, subjectPrefix: names.subjectPrefix, duplicateWindowMs });
  defer(names.stream, (s) => (conn.isClosed() ? Promise.resolve() : deleteStream(conn, s)));
  return names;
}

async function enqueueBatch(db: Kysely<DB>, values: string[]): Promise<string[]> {
  return db.transaction().execute(async (trx) => {
    const ids: string[] = [];
    for (const value of values) ids.push(await enqueueEvent(trx, { subject: "test.happened", schema: StringValueSchema, message: { value } }));
    return ids;
  });
}


async function unpublished(db: Kysely<DB>): Promise<number> {
  const row = await db.selectFrom("outbox").select((eb) => eb.fn.countAll<string>().as("n")).where("published_at", "is", null).executeTakeFirstOrThrow();
  return Number(row.n);
}

interface StoredEvent {
  seq: number;
  subject: string;
  msgId: string | undefined;
  header: (name: string) => string | undefined;
  data: Uint8Array;
}

/** Every message in the stream, in order (read by sequence; test streams are small). */
async function readStream(conn: NatsConnection, stream: string): Promise<StoredEvent[]> {
  const jsm = await conn.jetstreamManager();
  const { state } = await jsm.streams.info(stream);
  const out: StoredEvent[] = [];
  for (let seq = state.first_seq; state.messages > 0 && seq <= state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    out.push({ seq, subject: m.subject, msgId: m.header?.get("Nats-Msg-Id"), header: (n) => m.header?.get(n) || undefined, data: m.data });
  }
  return out;
}

function countBy<T>(items: T[], key: (t: T) => string | undefined): Map<string | undefined, number> {
  const counts = new Map<string | undefined, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return counts;
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

function relay(opts: { db: Kysely<DB>; schema: string; subjectPrefix: string; conn?: NatsConnection; registry?: Registry } & Partial<Parameters<typeof startOutboxRelay>[0]>): OutboxRelay {
  const r = startOutboxRelay({ databaseUrl: testDb.url, nc: opts.conn ?? nc, log, registry: opts.registry ?? new Registry(), pollMs: 50, ...opts });
  return defer(r, (x) => x.stop());
}

describe("transactional outbox", () => {
  test("delivers each event exactly once across relay restarts, competing replicas and a crash before marking", async () => {
    const { db, schema } = await freshService("restart");
    const { stream, subjectPrefix } = await freshStream("restart");
    const ids: string[] = [];
    for (let batch = 0; batch < 6; batch++) ids.push(...(await enqueueBatch(db, Array.from({ length: 10 }, (_, i) => `e${batch}-${i}`))));

    // Replica A starts draining in small batches and is stopped part-way through.
    const a = relay({ db, schema, subjectPrefix, batchSize: 5 });
    await waitFor("the first batches", async () => (await unpublished(db)) <= 50);
    await a.stop();

    // Two replicas take over and compete for the rest.
    const registry = new Registry();
    relay({ db, schema, subjectPrefix, batchSize: 5, registry });
    relay({ db, schema, subjectPrefix, batchSize: 5, registry });
    await waitFor("all rows published", async () => (await unpublished(db)) === 0);

    // A relay that died after the PubAck but before its commit leaves rows unmarked:
    // they are published again, and the broker drops the copies by Nats-Msg-Id.
    await db.updateTable("outbox").set({ published_at: null }).where("id", "in", ids.slice(0, 10)).execute();
    await waitFor("re-published rows marked again", async () => (await unpublished(db)) === 0);

    const events = await readStream(nc, stream);
    assert.equal(events.length, ids.length);
    const counts = countBy(events, (e) => e.msgId);
    assert.deepEqual([...counts.keys()].sort(), [...ids].sort());
    assert.ok([...counts.values()].every((n) => n === 1), "each event id is in the stream exactly once");
    assert.equal(events[0].subject, `${subjectPrefix}.test.happened`);
    assert.equal(events[0].header("Vouch-Event-Type"), "google.protobuf.StringValue");
    assert.ok((await metricValue(registry, "vouch_outbox_published_total", { schema })) >= 10);
  });

  test("keeps events while NATS is unreachable and delivers them once when it is back", async () => {
    const { db, schema } = await freshService("outage");
    const server: PrivateNats = defer(await startPrivateNats(), (s) => s.dispose());
    const conn = defer(await connectNats(server.url, log, { reconnectTimeWaitMs: 50 }), (c) => c.close());
    const { stream, subjectPrefix } = await freshStream("outage", conn);
    const registry = new Registry();
    relay({ db, schema, subjectPrefix, conn, registry, publishTimeoutMs: 300, minBackoffMs: 50, maxBackoffMs: 200 });

    const [before] = await enqueueBatch(db, ["before the outage"]);
    await waitFor("the first event published", async () => (await unpublished(db)) === 0);

    await server.stop();
    const during = await enqueueBatch(db, ["during 1", "during 2", "during 3", "during 4", "during 5"]);
    await waitFor("failed publish attempts", async () => (await metricValue(registry, "vouch_outbox_publish_failures_total")) > 0);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await unpublished(db), 5, "nothing is marked published while NATS is down");
    const attempts = await db.selectFrom("outbox").select("attempts").where("id", "in", during).execute();
    assert.ok(attempts.every((r) => r.attempts >= 1), `each failed publish is counted: ${JSON.stringify(attempts)}`);
    assert.ok((await metricValue(registry, "vouch_outbox_oldest_pending_seconds", { schema })) > 0, "the lag gauge shows the backlog");

    await server.start();
    await waitFor("the backlog published", async () => (await unpublished(db)) === 0);

    const events = await readStream(conn, stream);
    const counts = countBy(events, (e) => e.msgId);
    assert.deepEqual([...counts.keys()].sort(), [before, ...during].sort());
    assert.ok([...counts.values()].every((n) => n === 1), "each event id is in the stream exactly once");
    await waitFor("the lag gauge back to zero", async () => (await metricValue(registry, "vouch_outbox_oldest_pending_seconds", { schema })) === 0, 3_000);
  });

  test("a commit after a quiet spell goes out at once; commits during the batch interval wait for it and share one batch", async () => {
    const { db, schema } = await freshService("burst");
    const { stream, subjectPrefix } = await freshStream("burst");
    const registry = new Registry();
    const INTERVAL_MS = 1_500;
    // No polling to fall back on: only the trigger's NOTIFY can wake this relay.
    relay({ db, schema, subjectPrefix, registry, pollMs: 60_000, batchIntervalMs: INTERVAL_MS });
    // The listener is connected, and the relay's first (empty) batch at start is over an interval old.
    await new Promise((r) => setTimeout(r, 2 * INTERVAL_MS));

    const started = performance.now();
    await enqueueBatch(db, ["after a quiet spell"]);
    await waitFor("the first commit published", async () => (await unpublished(db)) === 0, INTERVAL_MS);
    const firstMs = performance.now() - started;
    assert.ok(firstMs < INTERVAL_MS / 2, `a lone commit is not held for the interval: published after ${firstMs.toFixed(0)} ms`);

    // 20 separate commits right after that batch: they wait for the interval to pass, then go together.
    const ids = await Promise.all(Array.from({ length: 20 }, (_, i) => enqueueBatch(db, [`burst ${i}`]).then(([id]) => id)));
    await waitFor("the burst published", async () => (await unpublished(db)) === 0, 2 * INTERVAL_MS);
    const burstMs = performance.now() - started;
    assert.ok(burstMs >= INTERVAL_MS - 100, `the burst waited for the interval: published after ${burstMs.toFixed(0)} ms`);

    assert.equal((await readStream(nc, stream)).length, ids.length + 1);
    assert.equal(await metricValue(registry, "vouch_outbox_batches_total", { schema }), 2, "one batch for the lone commit, one for the 20 of the burst");
  });

  test("a claim-publish-mark transaction is two round trips on the relay's own connection", async () => {
    const { db, schema } = await freshService("roundtrips");
    const { stream, subjectPrefix } = await freshStream("roundtrips");
    // Every message the relay's connection sends (pg's real client, watched, not replaced).
    const sent: string[] = [];
    const query = pg.Client.prototype.query;
    pg.Client.prototype.query = function (this: pg.Client & { connectionParameters: { application_name?: string } }, ...args: unknown[]) {
      if (this.connectionParameters.application_name === `vouch-${schema}-outbox-relay`) sent.push(String(typeof args[0] === "string" ? args[0] : (args[0] as { text: string }).text));
      return (query as (...a: unknown[]) => unknown).apply(this, args);
    } as typeof query;
    defer(query, async (original) => {
      pg.Client.prototype.query = original;
    });
    const registry = new Registry();
    relay({ db, schema, subjectPrefix, registry, pollMs: 60_000, batchIntervalMs: 0 });
    await new Promise((r) => setTimeout(r, 200)); // the listener is connected

    const ids = await enqueueBatch(db, Array.from({ length: 20 }, (_, i) => `one commit ${i}`));
    await waitFor("the commit published", async () => (await unpublished(db)) === 0, 5_000);
    assert.equal((await readStream(nc, stream)).length, ids.length);
    const claims = sent.filter((q) => q.startsWith("BEGIN;")).length;
    assert.ok(claims >= 1, "the relay claims on its own connection");
    assert.equal(sent.length, 2 * claims, `two messages per transaction: ${JSON.stringify(sent.map((q) => q.slice(0, 40)))}`);
    assert.ok(sent.some((q) => q.startsWith("UPDATE") && q.endsWith("COMMIT")), "the marks and the commit go in one message");
  });

  test("a relay whose connection breaks mid-batch fails that batch, stays up, and publishes on the next", async () => {
    const { db, schema } = await freshService("cut");
    const { stream, subjectPrefix } = await freshStream("cut");
    // The relay reaches Postgres through a TCP proxy whose sockets this test can reset.
    const sockets = new Set<Socket>();
    const proxy = createServer((client) => {
      const upstream = connect(5432, "127.0.0.1");
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => sockets.delete(s));
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    defer(proxy, (p) => new Promise((r) => p.close(r)));
    const url = new URL(testDb.url);
    url.host = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    const app = `vouch-${schema}-outbox-relay`;
    // Hold the outbox locked, so the relay's next claim waits on it with its connection checked out.
    await db.connection().execute(async (conn) => {
      await sql`BEGIN`.execute(conn);
      await sql.raw(`LOCK TABLE ${schema}.outbox IN ACCESS EXCLUSIVE MODE`).execute(conn);
      relay({ db, schema, subjectPrefix, databaseUrl: url.toString(), pollMs: 50, minBackoffMs: 50 });
      await waitFor("the relay's claim waiting on the lock", async () => {
        const { rows } = await sql`SELECT 1 FROM pg_stat_activity WHERE application_name = ${app} AND wait_event_type = 'Lock'`.execute(db);
        return rows.length > 0;
      }, 5_000);
      // The network drops the relay's connections: a reset, no goodbye from the server.
      for (const s of sockets) s.resetAndDestroy();
      await sql`COMMIT`.execute(conn);
    });
    // Had the broken connection's 'error' gone unheard, this process would have died here.
    const [id] = await enqueueBatch(db, ["after the cut"]);
    await waitFor("published on a new connection", async () => (await unpublished(db)) === 0, 5_000);
    assert.deepEqual((await readStream(nc, stream)).map((e) => e.msgId), [id]);
  });

  test("never publishes an event written in a rolled-back transaction", async () => {
    const { db, schema } = await freshService("rollback");
    const { stream, subjectPrefix } = await freshStream("rollback");
    relay({ db, schema, subjectPrefix });

    await assert.rejects(
      db.transaction().execute(async (trx) => {
        await enqueueEvent(trx, { subject: "test.happened", schema: StringValueSchema, message: { value: "rolled back" } });
        throw new Error("the state change failed");
      }),
      /the state change failed/,
    );
    const [committed] = await enqueueBatch(db, ["committed"]);
    await waitFor("the committed event published", async () => (await unpublished(db)) === 0);
    await new Promise((r) => setTimeout(r, 100)); // a little more time for a stray publish to show up

    const events = await readStream(nc, stream);
    assert.deepEqual(events.map((e) => e.msgId), [committed]);
    assert.deepEqual((await db.selectFrom("outbox").select("id").execute()).map((r) => r.id), [committed]);
  });
});

describe("consumers", () => {
  /** Publishes like the relay would: protobuf bytes with Nats-Msg-Id = event id. */
  async function publish(conn: NatsConnection, subject: string, eventId: string, data: Uint8Array) {
    const h = natsHeaders();
    h.set("Nats-Msg-Id", eventId);
    return conn.jetstream().publish(subject, data, { headers: h });
  }
  const encode = (value: string) => new TextEncoder().encode(`\n${String.fromCharCode(value.length)}${value}`); // StringValue{value}

  function consume(opts: Partial<Parameters<typeof startConsumer<typeof StringValueSchema, DB>>[0]> & Pick<Parameters<typeof startConsumer<typeof StringValueSchema, DB>>[0], "db" | "schemaName" | "stream" | "durable" | "handle">): Promise<EventConsumer> {
    return startConsumer<typeof StringValueSchema, DB>({
      nc,
      filterSubject: "test.>",
      schema: StringValueSchema,
      log,
      registry: new Registry(),
      ...opts,
    }).then((c) => defer(c, (x) => x.stop()));
  }

  test("a duplicate published past the broker's dedupe window runs its effect once", async () => {
    const { db, schema } = await freshService("dup_publish");
    const { stream, subjectPrefix } = await freshStream("dup_publish", nc, 100);
    const registry = new Registry();
    await consume({
      db,
      schemaName: schema,
      stream,
      durable: "dup_publish",
      registry,
      concurrency: 4, // both copies may run at once: the inbox row lock serialises them
      handle: async (trx, event, meta) => {
        await trx.insertInto("effects").values({ event_id: meta.eventId, value: event.value }).execute();
      },
    });

    await publish(nc, `${subjectPrefix}.test.happened`, "evt-1", encode("once"));
    await new Promise((r) => setTimeout(r, 150)); // past the 100 ms window
    const second = await publish(nc, `${subjectPrefix}.test.happened`, "evt-1", encode("once"));
    assert.equal(second.duplicate, false, "the broker stored the second copy");

    await waitFor("both copies handled", async () => (await metricValue(registry, "vouch_events_consumed_total")) === 2);
    const effects = await db.selectFrom("effects").select(["event_id", "value"]).execute();
    assert.deepEqual(effects, [{ event_id: "evt-1", value: "once" }]);
    assert.equal(await metricValue(registry, "vouch_events_consumed_total", { outcome: "duplicate" }), 1);
  });

  test("a non-transactional handler runs on the pool, not in a transaction, and a duplicate is still handled once", async () => {
    const { db, schema } = await freshService("no_trx");
    const { stream, subjectPrefix } = await freshStream("no_trx", nc, 100);
    const registry = new Registry();
    const inTransaction: boolean[] = [];
    await consume({
      db,
      schemaName: schema,
      stream,
      durable: "no_trx",
      registry,
      transactional: false,
      handle: async (pool, event, meta) => {
        inTransaction.push(pool.isTransaction);
        await pool.insertInto("effects").values({ event_id: meta.eventId, value: event.value }).onConflict((oc) => oc.doNothing()).execute();
      },
    });

    await publish(nc, `${subjectPrefix}.test.happened`, "evt-nt", encode("once"));
    await waitFor("the first copy handled", async () => (await metricValue(registry, "vouch_events_consumed_total")) === 1);
    await new Promise((r) => setTimeout(r, 150)); // past the 100 ms dedupe window
    await publish(nc, `${subjectPrefix}.test.happened`, "evt-nt", encode("once"));
    await waitFor("the second copy seen", async () => (await metricValue(registry, "vouch_events_consumed_total")) === 2);

    assert.deepEqual(inTransaction, [false], "handled once, outside any transaction");
    assert.equal(await metricValue(registry, "vouch_events_consumed_total", { outcome: "duplicate" }), 1);
    assert.deepEqual(await db.selectFrom("effects").select(["event_id", "value"]).execute(), [{ event_id: "evt-nt", value: "once" }]);
  });

  describe("batches (batchSize > 1)", () => {
    const txid = sql<string>`txid_current()::text`;

    test("events that arrive together share transactions, and each effect happens once", async () => {
      const { db, schema } = await freshService("batch_together");
      const { stream, subjectPrefix } = await freshStream("batch_together");
      // All published before the consumer starts, so they arrive together.
      for (let i = 0; i < 60; i++) await publish(nc, `${subjectPrefix}.test.happened`, `evt-${i}`, encode(`v${i}`));
      const registry = new Registry();
      await consume({
        db,
        schemaName: schema,
        stream,
        durable: "batch_together",
        registry,
        concurrency: 16,
        batchSize: 16,
        handle: async (trx, _event, meta) => {
          await trx.insertInto("effects").values({ event_id: meta.eventId, value: txid }).execute();
        },
      });
      await waitFor("all handled", async () => (await metricValue(registry, "vouch_events_consumed_total", { outcome: "processed" })) === 60);
      const effects = await db.selectFrom("effects").select(["event_id", "value"]).execute();
      assert.equal(new Set(effects.map((e) => e.event_id)).size, 60);
      assert.equal(effects.length, 60, "no effect twice");
      const perTransaction = countBy(effects, (e) => e.value);
      assert.ok(perTransaction.size < 60, `${perTransaction.size} transactions for 60 events`);
      assert.ok(Math.max(...perTransaction.values()) <= 16, "no batch above batchSize");
      const inbox = await db.selectFrom("inbox").select("event_id").where("consumer", "=", "batch_together").execute();
      assert.equal(inbox.length, 60);
    });

    test("a handler failing in a batch keeps nothing of that batch: each event is handled alone, once, and the failing one is retried", async () => {
      const { db, schema } = await freshService("batch_failure");
      const { stream, subjectPrefix } = await freshStream("batch_failure");
      for (let i = 0; i < 20; i++) await publish(nc, `${subjectPrefix}.test.happened`, `evt-${i}`, encode(i === 7 ? "flaky" : `v${i}`));
      const registry = new Registry();
      let flakyCalls = 0;
      await consume({
        db,
        schemaName: schema,
        stream,
        durable: "batch_failure",
        registry,
        concurrency: 20,
        batchSize: 20,
        backoffMs: [50],
        handle: async (trx, event, meta) => {
          await trx.insertInto("effects").values({ event_id: meta.eventId, value: txid }).execute();
          // Fails in the batch and on its first delivery alone; the redelivery succeeds.
          if (event.value === "flaky" && ++flakyCalls <= 2) throw new Error("not yet");
        },
      });
      await waitFor("all handled", async () => (await metricValue(registry, "vouch_events_consumed_total", { outcome: "processed" })) === 20);
      const effects = await db.selectFrom("effects").select(["event_id", "value"]).execute();
      assert.equal(effects.length, 20, "the rolled-back batch left no effect behind");
      assert.equal(new Set(effects.map((e) => e.event_id)).size, 20);
      assert.equal(flakyCalls, 3);
      assert.equal(await metricValue(registry, "vouch_events_consumed_total", { outcome: "retried" }), 1);
    });

    test("the same event twice in one batch is handled once", async () => {
      const { db, schema } = await freshService("batch_dup");
      const { stream, subjectPrefix } = await freshStream("batch_dup", nc, 100);
      await publish(nc, `${subjectPrefix}.test.happened`, "evt-twice", encode("twice"));
      await publish(nc, `${subjectPrefix}.test.happened`, "evt-other", encode("other"));
      await new Promise((r) => setTimeout(r, 150)); // past the 100 ms dedupe window
      await publish(nc, `${subjectPrefix}.test.happened`, "evt-twice", encode("twice"));
      const registry = new Registry();
      await consume({
        db,
        schemaName: schema,
        stream,
        durable: "batch_dup",
        registry,
        concurrency: 8,
        batchSize: 8,
        handle: async (trx, event, meta) => {
          await trx.insertInto("effects").values({ event_id: meta.eventId, value: txid }).execute();
        },
      });
      await waitFor("all three copies seen", async () => (await metricValue(registry, "vouch_events_consumed_total")) === 3);
      const effects = await db.selectFrom("effects").select(["event_id", "value"]).orderBy("event_id").execute();
      assert.deepEqual(effects.map((e) => e.event_id), ["evt-other", "evt-twice"]);
      assert.equal(effects[0].value, effects[1].value, "one batch");
      assert.equal(await metricValue(registry, "vouch_events_consumed_total", { outcome: "duplicate" }), 1);
    });
  });

  test("an event redelivered after its effect committed but before the ack is not applied again", async () => {
    const { db, schema } = await freshService("dup_crash");
    const { stream, subjectPrefix } = await freshStream("dup_crash");
    let handled = 0;

    // Replica 1 commits the effect, then "crashes": its connection is gone before the ack.
    const doomed = await connectNats(NATS_URL, log, { name: "doomed" });
    defer(doomed, (c) => c.close());
    const first = await consume({
      nc: doomed,
      db,
      schemaName: schema,
      stream,
      durable: "dup_crash",
      ackWaitMs: 500,
      handle: async (trx, event, meta) => {
        handled++;
        await trx.insertInto("effects").values({ event_id: meta.eventId, value: event.value }).execute();
        await doomed.close();
      },
    });
    await publish(nc, `${subjectPrefix}.test.happened`, "evt-crash", encode("x"));
    await waitFor("the first replica's effect", async () => (await db.selectFrom("effects").selectAll().execute()).length === 1);
    await first.stop();

    // Replica 2 gets the redelivery once the ack wait runs out, finds the inbox row, acks.
    const registry = new Registry();
    await consume({
      db,
      schemaName: schema,
      stream,
      durable: "dup_crash",
      ackWaitMs: 500,
      registry,
      handle: async () => {
        handled++;
      },
    });
    await waitFor("the redelivery acked as a duplicate", async () => (await metricValue(registry, "vouch_events_consumed_total", { outcome: "duplicate" })) === 1);
    assert.equal(handled, 1, "the handler ran once");
    assert.equal((await db.selectFrom("effects").selectAll().execute()).length, 1);
    const jsm = await nc.jetstreamManager();
    await waitFor("nothing left pending", async () => (await jsm.consumers.info(stream, "dup_crash")).num_ack_pending === 0);
  });

  test("a poison message is parked in dead_letters and on the dead-letter subject, counted, and the consumer moves on", async () => {
    const { db, schema } = await freshService("poison");
    const { stream, subjectPrefix } = await freshStream("poison");
    const registry = new Registry();
    const attempts = new Map<string, number>();
    await consume({
      db,
      schemaName: schema,
      stream,
      durable: "poison",
      registry,
      maxDeliver: 3,
      backoffMs: [20, 50],
      handle: async (trx, event, meta) => {
        attempts.set(meta.eventId, (attempts.get(meta.eventId) ?? 0) + 1);
        await trx.insertInto("effects").values({ event_id: meta.eventId, value: event.value }).execute();
        if (event.value === "boom") throw new Error("boom: the handler always fails on this one");
      },
    });

    const subject = `${subjectPrefix}.test.happened`;
    await publish(nc, subject, "evt-garbage", new Uint8Array([0x0a, 0x09, 0x61])); // length 9, one byte follows
    await publish(nc, subject, "evt-boom", encode("boom"));
    await publish(nc, subject, "evt-good", encode("good"));

    await waitFor("two dead letters and the good effect", async () => {
      const letters = await db.selectFrom("dead_letters").select("event_id").execute();
      const good = await db.selectFrom("effects").select("event_id").where("event_id", "=", "evt-good").execute();
      return letters.length === 2 && good.length === 1;
    });

    const letters = await db.selectFrom("dead_letters").selectAll().orderBy("event_id").execute();
    assert.deepEqual(
      letters.map((l) => [l.event_id, l.consumer, l.subject, l.deliveries, l.resolved_at]),
      [
        ["evt-boom", "poison", "test.happened", 3, null],
        ["evt-garbage", "poison", "test.happened", 1, null],
      ],
    );
    assert.match(letters[0].error, /boom: the handler always fails/);
    assert.match(letters[1].error, /cannot decode google\.protobuf\.StringValue/);
    assert.deepEqual(Buffer.from(letters[1].payload), Buffer.from([0x0a, 0x09, 0x61]), "the original bytes are kept");
    assert.equal(attempts.get("evt-boom"), 3, "retried up to maxDeliver");
    assert.equal(attempts.get("evt-garbage"), undefined, "undecodable bytes never reach the handler");
    assert.deepEqual(
      (await db.selectFrom("effects").select("event_id").execute()).map((r) => r.event_id),
      ["evt-good"],
      "failed attempts left no effect behind",
    );

    const parked = (await readStream(nc, stream)).filter((e) => e.subject === deadLetterSubject(subjectPrefix, "poison"));
    assert.deepEqual(parked.map((e) => e.header("Vouch-Event-Id")).sort(), ["evt-boom", "evt-garbage"]);
    assert.equal(parked.find((e) => e.header("Vouch-Event-Id") === "evt-boom")?.header("Vouch-Deliveries"), "3");
    assert.equal(await metricValue(registry, "vouch_dead_letters_total", { consumer: "poison" }), 2);

    const jsm = await nc.jetstreamManager();
    await waitFor("nothing left pending", async () => {
      const info = await jsm.consumers.info(stream, "poison");
      return info.num_ack_pending === 0 && info.num_pending === 0;
    });
  });

  test("a failure caused by an outage is retried past maxDeliver and applied once the outage ends, never parked", async () => {
    const { db, schema } = await freshService("outage");
    const { stream, subjectPrefix } = await freshStream("outage");
    let attempts = 0;
    await consume({
      db,
      schemaName: schema,
      stream,
      durable: "outage",
      maxDeliver: 2,
      backoffMs: [20],
      handle: async (trx, event, meta) => {
        attempts++;
        // What pg throws while Postgres restarts: SQLSTATE 57P01 admin_shutdown.
        if (attempts <= 4) throw Object.assign(new Error("terminating connection due to administrator command"), { code: "57P01" });
        await trx.insertInto("effects").values({ event_id: meta.eventId, value: event.value }).execute();
      },
    });
    await publish(nc, `${subjectPrefix}.test.happened`, "evt-outage", encode("survives"));
    await waitFor("the effect", () => db.selectFrom("effects").selectAll().executeTakeFirst());
    assert.equal(attempts, 5);
    assert.equal((await db.selectFrom("dead_letters").selectAll().execute()).length, 0);
  });

  test("deliveries a handler defers with retryLater are not failures: the event is applied after more deferrals than maxDeliver, never parked", async () => {
    const { db, schema } = await freshService("deferred");
    const { stream, subjectPrefix } = await freshStream("deferred");
    const registry = new Registry();
    let deliveries = 0;
    await consume({
      db,
      schemaName: schema,
      stream,
      durable: "deferred",
      registry,
      maxDeliver: 2,
      maxTransientDeliveries: 2,
      maxDeferrals: 10,
      backoffMs: [50],
      handle: async (trx, event, meta) => {
        deliveries++;
        if (deliveries <= 4) throw retryLater(20, "the dependency is not ready");
        // One real failure after the deferrals: still within the budget of 2.
        if (deliveries === 5) throw new Error("a genuine failure");
        await trx.insertInto("effects").values({ event_id: meta.eventId, value: event.value }).execute();
      },
    });
    const started = Date.now();
    await publish(nc, `${subjectPrefix}.test.happened`, "evt-deferred", encode("later"));
    await waitFor("the effect", () => db.selectFrom("effects").selectAll().executeTakeFirst());
    assert.equal(deliveries, 6);
    assert.ok(Date.now() - started >= 80, "each deferral waited its delay");
    assert.equal((await db.selectFrom("dead_letters").selectAll().execute()).length, 0, "never parked");
    assert.equal(await metricValue(registry, "vouch_events_consumed_total", { consumer: "deferred", outcome: "deferred" }), 4);
    assert.equal(await metricValue(registry, "vouch_events_consumed_total", { consumer: "deferred", outcome: "retried" }), 1);
    assert.equal((await db.selectFrom("event_deferrals").selectAll().execute()).length, 0, "the count is removed once the event is applied");
    const { config } = await (await nc.jetstreamManager()).consumers.info(stream, "deferred");
    assert.equal(config.max_deliver, 12, "the server allows the deferrals on top of the failure budget");
  });

  test("a consumer restarted with a new configuration updates its durable in place, and stops promptly", async () => {
    const { db, schema } = await freshService("reconfig");
    const { stream, subjectPrefix } = await freshStream("reconfig");
    const base = { db, schemaName: schema, stream, durable: "reconfig", handle: async () => {} };
    const started = Date.now();
    await (await consume({ ...base, filterSubject: "test.>" })).stop(); // stopped before its first pull
    await (await consume({ ...base, filterSubject: "other.>", maxDeliver: 4, maxTransientDeliveries: 6, backoffMs: [10, 20], ackWaitMs: 2_000 })).stop();
    assert.ok(Date.now() - started < 2_000, "start/stop does not wait for a pull to expire");
    const { config } = await (await nc.jetstreamManager()).consumers.info(stream, "reconfig");
    assert.equal(config.filter_subject, `${subjectPrefix}.other.>`);
    assert.equal(config.max_deliver, 6, "the server's limit is the transient one; maxDeliver is applied by the consumer");
    assert.equal(config.ack_wait, 2_000_000_000);
    assert.deepEqual(config.backoff, [2_000_000_000, 2_000_000_000], "server-side backoff never below ack_wait");
  });

  test("an event whose handler dies on every delivery is parked once its deliveries run out", async () => {
    const { db, schema } = await freshService("crash_loop");
    const { stream, subjectPrefix } = await freshStream("crash_loop");
    const common = { db, schemaName: schema, stream, durable: "crash_loop", maxDeliver: 2, maxTransientDeliveries: 2, ackWaitMs: 700 };

    // Two replicas in turn take the event and die without answering the server.
    for (let replica = 1; replica <= 2; replica++) {
      const conn = defer(await connectNats(NATS_URL, log, { name: `crash-${replica}` }), (c) => c.close());
      let died!: () => void;
      const dead = new Promise<void>((r) => (died = r));
      const c = await consume({
        ...common,
        nc: conn,
        handle: async () => {
          await conn.close();
          died();
          throw new Error("process died");
        },
      });
      if (replica === 1) await publish(nc, `${subjectPrefix}.test.happened`, "evt-crash-loop", encode("deadly"));
      await dead;
      await c.stop();
    }

    // A healthy replica learns from the server's max-deliveries advisory and parks it.
    const registry = new Registry();
    let handled = 0;
    await consume({
      ...common,
      registry,
      handle: async () => {
        handled++;
      },
    });
    const letter = await waitFor("the dead letter", () => db.selectFrom("dead_letters").selectAll().executeTakeFirst());
    assert.equal(letter.event_id, "evt-crash-loop");
    assert.equal(letter.deliveries, 2);
    assert.match(letter.error, /crashed or hung/);
    assert.equal(handled, 0);
    assert.equal(await metricValue(registry, "vouch_dead_letters_total", { consumer: "crash_loop" }), 1);
    const parked = (await readStream(nc, stream)).filter((e) => e.subject === deadLetterSubject(subjectPrefix, "crash_loop"));
    assert.deepEqual(parked.map((e) => e.header("Vouch-Event-Id")), ["evt-crash-loop"]);
  });
});
