// Dead letters: list them, replay them, or dismiss them (runbook: "Replay dead letters").
// Same environment as the service whose consumer parked them (DATABASE_URL, NATS_URL,
// NATS_STREAM, NATS_SUBJECT_PREFIX):
//
//   npx tsx scripts/replay-dead-letters.ts list    --schema voucher [--consumer voucher-purchased-codes]
//   npx tsx scripts/replay-dead-letters.ts replay  --schema voucher (--id <dead letter id>… | --consumer <name> | --all)
//   npx tsx scripts/replay-dead-letters.ts dismiss --schema voucher (--id … | --consumer … | --all)
//   (in the container image: node dist/scripts/replay-dead-letters.js …)
//
// Replay republishes the stored payload on its original subject with the original event id
// as Nats-Msg-Id, and deletes the letter in the same unit (the row goes only once the
// broker acknowledged the publish). Why this is safe and sufficient:
// - the consumer that parked it has no inbox row for that id (its effect never committed),
//   so it handles the event afresh, with a fresh delivery budget; if it fails again, it is
//   parked again as a new letter;
// - every other consumer of that subject already has its inbox row for the id, so the copy
//   is acknowledged as a duplicate and changes nothing there;
// - inside the stream's duplicate window (2 min) the broker would drop the copy: then
//   nothing is deleted and the tool says to try again after the window.
// Fix the cause first (deploy the fix, or repair the data), then replay.
// Dismiss marks letters resolved without replaying them (they stay in the table).
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { sql, type Kysely } from "kysely";
import { headers as natsHeaders, type NatsConnection } from "nats";
import { loadConfig } from "../services/kit/config.js";
import { assertIdentifier, createDb } from "../services/kit/db.js";
import { connectNats, type EventTables } from "../services/kit/events/index.js";
import { createLogger } from "../services/kit/log.js";

export interface Selection {
  /** Schema of the service whose consumer parked the letters. */
  schema: string;
  ids?: string[];
  consumer?: string;
  /** Required when neither ids nor consumer narrow the selection. */
  all?: boolean;
}

export interface DeadLetterRow {
  id: string;
  consumer: string;
  eventId: string;
  subject: string;
  deliveries: number;
  error: string;
  createdAt: Date;
}

export interface ReplayResult {
  replayed: DeadLetterRow[];
  /** Still inside the broker's duplicate window: left in place, try again later. */
  tooSoon: DeadLetterRow[];
}

// Any service's database: only its event tables are touched.
type AnyDb = Kysely<any>;

function selected(anyDb: AnyDb, s: Selection) {
  const db = anyDb as Kysely<EventTables>;
  if (!s.all && !s.ids?.length && !s.consumer) throw new Error("choose letters with --id, --consumer, or --all");
  let q = db.withSchema(assertIdentifier(s.schema, "schema")).selectFrom("dead_letters").where("resolved_at", "is", null);
  if (s.ids?.length) q = q.where("id", "in", s.ids);
  if (s.consumer) q = q.where("consumer", "=", s.consumer);
  return q;
}

const toRow = (r: { id: string; consumer: string; event_id: string; subject: string; deliveries: number; error: string; created_at: Date }): DeadLetterRow => ({
  id: r.id,
  consumer: r.consumer,
  eventId: r.event_id,
  subject: r.subject,
  deliveries: r.deliveries,
  error: r.error,
  createdAt: r.created_at,
});

export async function listDeadLetters(db: AnyDb, s: Selection): Promise<DeadLetterRow[]> {
  const rows = await selected(db, { ...s, all: true })
    .select(["id", "consumer", "event_id", "subject", "deliveries", "error", "created_at"])
    .orderBy("created_at")
    .execute();
  return rows.map(toRow);
}

export async function replayDeadLetters(anyDb: AnyDb, nc: NatsConnection, opts: Selection & { stream: string; subjectPrefix: string }): Promise<ReplayResult> {
  const db = anyDb as Kysely<EventTables>;
  const ids = (await selected(db, opts).select("id").orderBy("created_at").execute()).map((r) => r.id);
  const js = nc.jetstream();
  const result: ReplayResult = { replayed: [], tooSoon: [] };
  for (const id of ids) {
    const outcome = await db.transaction().execute(async (trx) => {
      // Locked and deleted first: two operators replaying at once replay each letter once.
      const letter = await trx
        .withSchema(opts.schema)
        .deleteFrom("dead_letters")
        .where("id", "=", id)
        .where("resolved_at", "is", null)
        .returning(["id", "consumer", "event_id", "subject", "payload", "deliveries", "error", "created_at"])
        .executeTakeFirst();
      if (!letter) return undefined; // replayed or dismissed meanwhile
      const h = natsHeaders();
      h.set("Vouch-Replayed-From", letter.id);
      const ack = await js.publish(`${opts.subjectPrefix}.${letter.subject}`, letter.payload, { msgID: letter.event_id, expect: { streamName: opts.stream }, headers: h });
      const row = toRow(letter);
      if (ack.duplicate) throw Object.assign(new Error("duplicate"), { tooSoon: row });
      return row;
    }).catch((err: Error & { tooSoon?: DeadLetterRow }) => {
      if (err.tooSoon) return { tooSoon: err.tooSoon };
      throw err;
    });
    if (outcome && "tooSoon" in outcome) result.tooSoon.push(outcome.tooSoon);
    else if (outcome) result.replayed.push(outcome);
  }
  return result;
}

export async function dismissDeadLetters(anyDb: AnyDb, s: Selection): Promise<number> {
  const db = anyDb as Kysely<EventTables>;
  const ids = (await selected(db, s).select("id").execute()).map((r) => r.id);
  if (ids.length === 0) return 0;
  const res = await db.withSchema(s.schema).updateTable("dead_letters").set({ resolved_at: sql<Date>`now()` }).where("id", "in", ids).where("resolved_at", "is", null).executeTakeFirst();
  return Number(res.numUpdatedRows);
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: { schema: { type: "string" }, id: { type: "string", multiple: true }, consumer: { type: "string" }, all: { type: "boolean" } },
  });
  const [command] = positionals;
  if (!["list", "replay", "dismiss"].includes(command ?? "") || !values.schema) {
    console.error("usage: replay-dead-letters.ts list|replay|dismiss --schema <service schema> [--id <id>]… [--consumer <name>] [--all]");
    process.exit(2);
  }
  const config = loadConfig("edge"); // only the shared variables are read
  const log = createLogger("dead-letters", process.env.LOG_LEVEL ?? "warn");
  const db = createDb<EventTables>({ url: config.databaseUrl, schema: values.schema, log, max: 2 });
  const selection: Selection = { schema: values.schema, ids: values.id, consumer: values.consumer, all: values.all };
  const show = (r: DeadLetterRow) => `${r.id}  ${r.createdAt.toISOString()}  ${r.consumer}  ${r.subject}  event ${r.eventId}  after ${r.deliveries} deliveries: ${r.error}`;
  try {
    if (command === "list") {
      const rows = await listDeadLetters(db, selection);
      for (const r of rows) console.log(show(r));
      console.log(`${rows.length} unresolved dead letter(s) in schema ${values.schema}`);
    } else if (command === "dismiss") {
      console.log(`dismissed ${await dismissDeadLetters(db, selection)} dead letter(s)`);
    } else {
      const nc = await connectNats(config.natsUrl, log, { name: "dead-letter-replay" });
      try {
        const { replayed, tooSoon } = await replayDeadLetters(db, nc, { ...selection, stream: config.natsStream, subjectPrefix: config.natsSubjectPrefix });
        for (const r of replayed) console.log(`replayed ${show(r)}`);
        for (const r of tooSoon) console.log(`not yet: ${r.id} was parked inside the stream's duplicate window; replay again in a couple of minutes`);
        console.log(`${replayed.length} replayed, ${tooSoon.length} left for later`);
        if (tooSoon.length) process.exitCode = 3;
      } finally {
        await nc.close();
      }
    }
  } finally {
    await db.destroy();
  }
}
