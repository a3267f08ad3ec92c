// The transactional outbox (producer side) and the inbox / dead-letter tables (consumer
// side). Every service owns these three tables in its own schema: add `outboxMigration`
// to the service's migrations, first (e.g. as "0000_events").
//
// A service never publishes to NATS directly: it calls `enqueueEvent` inside the same
// transaction as the state change, and the relay publishes after commit. So an event
// exists if and only if its change was committed.
import { create, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { sql, type ColumnType, type Generated, type Kysely, type Migration, type Transaction } from "kysely";
import { newId } from "../ids.js";
import { traceHeaders } from "../tracing.js";

/** The LISTEN/NOTIFY channel; the payload is the schema whose outbox has new rows. */
export const OUTBOX_CHANNEL = "vouch_outbox";

/** Header carrying the protobuf full name of the payload (e.g. `vouch.events.v1.UserLoggedIn`). */
export const EVENT_TYPE_HEADER = "Vouch-Event-Type";

export interface OutboxTable {
  /** Event id (UUIDv7); published as Nats-Msg-Id, so it is also the broker's dedupe key. */
  id: string;
  /** Relative to the stream's prefix: `auth.user_logged_in`. */
  subject: string;
  payload: Uint8Array;
  headers: ColumnType<Record<string, string>, string, string>;
  created_at: ColumnType<Date, never, never>;
  published_at: ColumnType<Date | null, never, Date | null>;
  attempts: Generated<number>;
}

export interface InboxTable {
  consumer: string;
  event_id: string;
  processed_at: ColumnType<Date, never, never>;
}

/** Redeliveries a handler asked for with `retryLater`: they do not count as failures. */
export interface EventDeferralTable {
  consumer: string;
  event_id: string;
  deferrals: number;
  updated_at: ColumnType<Date, never, Date>;
}

export interface DeadLetterTable {
  id: string;
  consumer: string;
  event_id: string;
  /** Full subject the message was consumed from. */
  subject: string;
  payload: Uint8Array;
  error: string;
  deliveries: number;
  created_at: ColumnType<Date, never, never>;
  /** Set by an operator once the letter was replayed or dismissed. */
  resolved_at: ColumnType<Date | null, never, Date | null>;
}

/** Merge into a service's kysely DB interface: `interface DB extends EventTables { … }`. */
export interface EventTables {
  outbox: OutboxTable;
  inbox: InboxTable;
  dead_letters: DeadLetterTable;
  event_deferrals: EventDeferralTable;
}

export const outboxMigration: Migration = {
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("outbox")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("subject", "text", (c) => c.notNull())
      .addColumn("payload", "bytea", (c) => c.notNull())
      .addColumn("headers", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
      .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addColumn("published_at", "timestamptz")
      .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
      .execute();
    // The relay's only ordered path to pending rows: ordering by created_at (not id) keeps
    // the planner from walking the primary key past every published row.
    await db.schema
      .createIndex("outbox_unpublished")
      .on("outbox")
      .columns(["created_at", "id"])
      .where(sql.ref("published_at"), "is", null)
      .execute();
    await db.schema.createIndex("outbox_published_at").on("outbox").column("published_at").execute();
    // The relay's wake-up, sent on commit (never for a rolled-back change) by the database
    // itself: no extra round trip per event. Postgres folds the identical notifications of
    // one transaction into one.
    await sql`
      CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify(${sql.lit(OUTBOX_CHANNEL)}, TG_TABLE_SCHEMA);
        RETURN NULL;
      END $$`.execute(db);
    await sql`CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox()`.execute(db);

    await db.schema
      .createTable("inbox")
      .addColumn("consumer", "text", (c) => c.notNull())
      .addColumn("event_id", "text", (c) => c.notNull())
      .addColumn("processed_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addPrimaryKeyConstraint("inbox_pk", ["consumer", "event_id"])
      .execute();

    await db.schema
      .createTable("dead_letters")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("consumer", "text", (c) => c.notNull())
      .addColumn("event_id", "text", (c) => c.notNull())
      .addColumn("subject", "text", (c) => c.notNull())
      .addColumn("payload", "bytea", (c) => c.notNull())
      .addColumn("error", "text", (c) => c.notNull())
      .addColumn("deliveries", "integer", (c) => c.notNull())
      .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addColumn("resolved_at", "timestamptz")
      // Parking is idempotent: a letter parked twice (crash between insert and term) is one row.
      .addUniqueConstraint("dead_letters_consumer_event", ["consumer", "event_id"])
      .execute();
    await db.schema
      .createTable("event_deferrals")
      .addColumn("consumer", "text", (c) => c.notNull())
      .addColumn("event_id", "text", (c) => c.notNull())
      .addColumn("deferrals", "integer", (c) => c.notNull())
      .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addPrimaryKeyConstraint("event_deferrals_pk", ["consumer", "event_id"])
      .execute();
    await db.schema
      .createIndex("dead_letters_unresolved")
      .on("dead_letters")
      .column("created_at")
      .where(sql.ref("resolved_at"), "is", null)
      .execute();
  },
  async down(db: Kysely<any>) {
    await db.schema.dropTable("event_deferrals").execute();
    await db.schema.dropTable("dead_letters").execute();
    await sql`DROP FUNCTION notify_outbox() CASCADE`.execute(db);
    await db.schema.dropTable("inbox").execute();
    await db.schema.dropTable("outbox").execute();
  },
};

const RELATIVE_SUBJECT = /^[a-z0-9_]+(\.[a-z0-9_]+)*$/;

export interface EnqueueEventInput<Desc extends DescMessage> {
  /** Relative subject, e.g. `auth.user_logged_in`; the relay prefixes it with the stream's prefix. */
  subject: string;
  schema: Desc;
  message: MessageInitShape<Desc>;
  /** Extra NATS headers to publish with the event. */
  headers?: Record<string, string>;
}

/** An outbox row ready to insert: for a store that writes its event in the same statement as its change. */
export interface OutboxRow {
  id: string;
  subject: string;
  payload: Uint8Array;
  /** JSON text (the column is jsonb). */
  headers: string;
}

/**
 * The outbox row of an event, for a store that inserts it itself (e.g. in a CTE with the
 * state change, one round trip): `INSERT INTO outbox (id, subject, payload, headers)`.
 * Same rules as `enqueueEvent`, which uses it.
 */
export function outboxRow<Desc extends DescMessage>(input: EnqueueEventInput<Desc>): OutboxRow {
  if (!RELATIVE_SUBJECT.test(input.subject)) {
    throw new Error(`event subject "${input.subject}" must be dot-separated lower_snake tokens, e.g. auth.user_logged_in`);
  }
  return {
    id: newId(),
    subject: input.subject,
    payload: toBinary(input.schema, create(input.schema, input.message)),
    // The producer's trace context travels with the event, so its consumers join the trace.
    headers: JSON.stringify({ ...traceHeaders(), ...input.headers, [EVENT_TYPE_HEADER]: input.schema.typeName }),
  };
}

/**
 * Writes an event into the outbox as part of the caller's transaction and returns its id.
 * The NOTIFY that wakes the relay (the table's trigger) is transactional too: it fires on
 * commit, never on rollback.
 */
export async function enqueueEvent<DB, Desc extends DescMessage>(
  trx: Transaction<DB>,
  input: EnqueueEventInput<Desc>,
): Promise<string> {
  const row = outboxRow(input);
  await (trx as unknown as Kysely<EventTables>).insertInto("outbox").values(row).execute();
  return row.id;
}
