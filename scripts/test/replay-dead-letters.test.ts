// scripts/replay-dead-letters.ts against the real Postgres and NATS, with the kit's real
// consumer: a poison event is parked, replayed once the handler is fixed, handled exactly
// once by the consumer that parked it, and ignored by another consumer that had already
// handled it; a replay inside the broker's duplicate window changes nothing.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { StringValueSchema } from "@bufbuild/protobuf/wkt";
import { toBinary, create } from "@bufbuild/protobuf";
import { sql, type Generated, type Kysely } from "kysely";
import type { NatsConnection } from "nats";
import { Registry } from "prom-client";
import { createDb } from "../../services/kit/db.js";
import { connectNats, ensureStream, outboxMigration, startConsumer, type EventConsumer, type EventTables } from "../../services/kit/events/index.js";
import { createLogger } from "../../services/kit/log.js";
import { runMigrations } from "../../services/kit/migrate.js";
import { createTestDatabase, deleteStream, testEventNames, type TestDatabase } from "../../services/kit/testing.js";
import { dismissDeadLetters, listDeadLetters, replayDeadLetters } from "../replay-dead-letters.js";

interface DB extends EventTables {
  effects: { id: Generated<number>; consumer: string; value: string };
}

const log = createLogger("replay-test", process.env.LOG_LEVEL ?? "silent");
const DUPLICATE_WINDOW_MS = 1_500;
let testDb: TestDatabase;
let nc: NatsConnection;
let db: Kysely<DB>;
let names: { stream: string; subjectPrefix: string };
const consumers: EventConsumer[] = [];
let broken = true;

async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const effects = async (consumer: string, value: string) =>
  Number((await db.selectFrom("effects").select((eb) => eb.fn.countAll<string>().as("n")).where("consumer", "=", consumer).where("value", "=", value).executeTakeFirstOrThrow()).n);

before(async () => {
  testDb = await createTestDatabase("replay_dead_letters");
  nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", log, { name: "replay-test" });
  names = testEventNames("replay_dead_letters");
  await ensureStream(nc, { name: names.stream, subjectPrefix: names.subjectPrefix, duplicateWindowMs: DUPLICATE_WINDOW_MS });
  db = createDb<DB>({ url: testDb.url, schema: "svc", log, max: 6 });
  await runMigrations(db, {
    schema: "svc",
    log,
    migrations: {
      "0000_events": outboxMigration,
      "0001_effects": {
        up: async (d) => {
          await sql`CREATE TABLE effects (id serial PRIMARY KEY, consumer text NOT NULL, value text NOT NULL)`.execute(d);
        },
      },
    },
  });
  const consumer = (durable: string, failWhileBroken: boolean) =>
    startConsumer({
      nc,
      stream: names.stream,
      subjectPrefix: names.subjectPrefix,
      durable,
      filterSubject: "test.>",
      schema: StringValueSchema,
      db,
      schemaName: "svc",
      maxDeliver: 2,
      backoffMs: [50],
      log,
      registry: new Registry(),
      handle: async (trx, event) => {
        if (failWhileBroken && broken && event.value.startsWith("poison")) throw new Error("handler bug");
        await trx.insertInto("effects").values({ consumer: durable, value: event.value }).execute();
      },
    });
  consumers.push(await consumer("fragile", true), await consumer("sturdy", false));
});

after(async () => {
  for (const c of consumers) await c.stop().catch(() => {});
  await deleteStream(nc, names.stream).catch(() => {});
  await nc?.close();
  await db?.destroy();
  await testDb?.drop();
});

async function publish(value: string, eventId: string) {
  await nc.jetstream().publish(`${names.subjectPrefix}.test.happened`, toBinary(StringValueSchema, create(StringValueSchema, { value })), { msgID: eventId });
}

test("a parked event is replayed once the handler is fixed, and runs once everywhere", async () => {
  await publish("poison-1", "evt-poison-1");
  const [letter] = await waitFor("the dead letter", async () => {
    const rows = await listDeadLetters(db, { schema: "svc" });
    return rows.length > 0 && rows;
  });
  assert.equal(letter.consumer, "fragile");
  assert.equal(letter.eventId, "evt-poison-1");
  assert.equal(letter.subject, "test.happened");
  await waitFor("the sturdy consumer's effect", async () => (await effects("sturdy", "poison-1")) === 1);

  // Inside the duplicate window the broker would drop the copy: nothing changes.
  const early = await replayDeadLetters(db, nc, { schema: "svc", all: true, ...names });
  assert.deepEqual(early.replayed, []);
  assert.deepEqual(early.tooSoon.map((r) => r.id), [letter.id]);
  assert.equal((await listDeadLetters(db, { schema: "svc" })).length, 1, "the letter is kept");

  broken = false;
  await new Promise((r) => setTimeout(r, DUPLICATE_WINDOW_MS + 200));
  const done = await replayDeadLetters(db, nc, { schema: "svc", consumer: "fragile", ...names });
  assert.deepEqual(done.replayed.map((r) => r.id), [letter.id]);
  await waitFor("the fragile consumer's effect", async () => (await effects("fragile", "poison-1")) === 1);
  await new Promise((r) => setTimeout(r, 300)); // room for any wrong second run to show
  assert.equal(await effects("fragile", "poison-1"), 1);
  assert.equal(await effects("sturdy", "poison-1"), 1, "the consumer that had handled it ignores the copy");
  assert.deepEqual(await listDeadLetters(db, { schema: "svc" }), []);

  // Replaying again finds nothing to do.
  assert.deepEqual(await replayDeadLetters(db, nc, { schema: "svc", all: true, ...names }), { replayed: [], tooSoon: [] });
});

test("dismiss resolves letters without replaying them; a selection is required", async () => {
  broken = true;
  await publish("poison-2", "evt-poison-2");
  await waitFor("the second dead letter", async () => (await listDeadLetters(db, { schema: "svc" })).length === 1);
  await assert.rejects(dismissDeadLetters(db, { schema: "svc" }), /--id, --consumer, or --all/);
  assert.equal(await dismissDeadLetters(db, { schema: "svc", consumer: "fragile" }), 1);
  assert.deepEqual(await listDeadLetters(db, { schema: "svc" }), []);
  const row = await db.selectFrom("dead_letters").select(["event_id", "resolved_at"]).where("event_id", "=", "evt-poison-2").executeTakeFirstOrThrow();
  assert.ok(row.resolved_at instanceof Date);
  assert.equal(await effects("fragile", "poison-2"), 0);
});
