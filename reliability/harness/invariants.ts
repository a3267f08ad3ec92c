// The promises of the platform, checked directly in the database after a scenario: what the
// services answered is only a claim, the rows are the truth. Each check returns its counts so
// the report says what was verified, not just that it passed.
import { fromBinary } from "@bufbuild/protobuf";
import pg from "pg";
import { CodeReceivedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { check, type Check } from "./history.js";
import { waitFor } from "./util.js";

export type Sql = pg.Pool;

export function openSql(url: string): Sql {
  const pool = new pg.Pool({ connectionString: url, max: 3 });
  pool.on("error", () => {}); // idle clients die when a scenario restarts Postgres
  return pool;
}

export async function rows<T = Record<string, unknown>>(db: Sql, text: string, values: unknown[] = []): Promise<T[]> {
  return (await db.query(text, values)).rows as T[];
}

export async function one<T = Record<string, unknown>>(db: Sql, text: string, values: unknown[] = []): Promise<T> {
  return (await rows<T>(db, text, values))[0];
}

async function schemasWith(db: Sql, table: string): Promise<string[]> {
  const r = await rows<{ table_schema: string }>(db, "SELECT table_schema FROM information_schema.tables WHERE table_name = $1 ORDER BY 1", [table]);
  return r.map((x) => x.table_schema);
}

// ── events ───────────────────────────────────────────────────────────────────────────────

/** Waits until every outbox row of every service is published, then reports the counts. */
export async function everyOutboxEventPublished(db: Sql, timeoutMs = 60_000): Promise<Check> {
  const schemas = await schemasWith(db, "outbox");
  const count = async () => {
    let total = 0;
    let pending = 0;
    for (const s of schemas) {
      const r = await one<{ total: string; pending: string }>(db, `SELECT count(*) AS total, count(*) FILTER (WHERE published_at IS NULL) AS pending FROM "${s}".outbox`);
      total += Number(r.total);
      pending += Number(r.pending);
    }
    return { total, pending };
  };
  try {
    const c = await waitFor("every outbox event to be published", async () => {
      const c = await count();
      return c.pending === 0 ? c : undefined;
    }, timeoutMs, 200);
    return check("every outbox event published", true, `${c.total} events in ${schemas.length} outboxes, 0 pending`);
  } catch {
    const c = await count();
    return check("every outbox event published", false, `${c.pending} of ${c.total} still unpublished after ${timeoutMs / 1000} s`);
  }
}

export interface DeadLetter {
  schema: string;
  consumer: string;
  event_id: string;
  subject: string;
  error: string;
}

export async function deadLetters(db: Sql): Promise<DeadLetter[]> {
  const out: DeadLetter[] = [];
  for (const s of await schemasWith(db, "dead_letters")) {
    out.push(...(await rows<DeadLetter>(db, `SELECT $1::text AS schema, consumer, event_id, subject, error FROM "${s}".dead_letters ORDER BY created_at`, [s])));
  }
  return out;
}

/** Every dead letter is one the scenario put there on purpose (`expected` event ids). */
export async function everyDeadLetterAccountedFor(db: Sql, expected: ReadonlySet<string> = new Set()): Promise<Check> {
  const letters = await deadLetters(db);
  const stray = letters.filter((l) => !expected.has(l.event_id));
  const detail = `${letters.length} dead letters, ${letters.length - stray.length} injected on purpose, ${stray.length} unexplained` +
    (stray.length ? `: ${stray.slice(0, 5).map((l) => `${l.schema}/${l.consumer} ${l.subject}: ${l.error.slice(0, 160)}`).join("; ")}` : "");
  return check("every dead letter accounted for", stray.length === 0, detail);
}

// ── voucher ──────────────────────────────────────────────────────────────────────────────

/** Uses, per-user counters and assignments agree with each other and with the book's limits. */
export async function voucherInvariants(db: Sql): Promise<Check[]> {
  const checks: Check[] = [];
  const over = await one<{ codes: string; over: string; max: number | null; used: string }>(db, `
    SELECT count(*) AS codes, count(*) FILTER (WHERE c.use_count > b.uses_per_code) AS over,
           max(c.use_count) AS max, count(*) FILTER (WHERE c.use_count > 0) AS used
      FROM voucher.codes c JOIN voucher.books b ON b.id = c.book_id`);
  checks.push(check("no code redeemed beyond its uses", Number(over.over) === 0, `${over.codes} codes, ${over.used} used, max use_count ${over.max ?? 0}, ${over.over} over their book's uses_per_code`));

  const mismatch = await one<{ n: string; redemptions: string }>(db, `
    SELECT count(*) FILTER (WHERE c.use_count <> coalesce(r.n, 0)) AS n, coalesce(sum(r.n), 0) AS redemptions
      FROM voucher.codes c
      LEFT JOIN (SELECT code_id, count(*) AS n FROM voucher.redemptions WHERE state = 'redeemed' GROUP BY code_id) r ON r.code_id = c.id`);
  checks.push(check("each code's use count equals its redemptions in effect", Number(mismatch.n) === 0, `${mismatch.redemptions} redemptions in effect, ${mismatch.n} codes disagree`));

  const held = await one<{ n: string; owners: string }>(db, `
    WITH owned AS (SELECT book_id, owner_user_id AS user_id, count(*) AS n FROM voucher.codes WHERE owner_user_id IS NOT NULL GROUP BY 1, 2)
    SELECT count(*) FILTER (WHERE coalesce(o.n, 0) <> coalesce(u.codes_held, 0)) AS n, count(*) AS owners
      FROM owned o FULL JOIN voucher.book_users u ON u.book_id = o.book_id AND u.user_id = o.user_id`);
  checks.push(check("per-user codes held match the codes assigned", Number(held.n) === 0, `${held.owners} (book, user) pairs, ${held.n} disagree`));

  const redeemedBy = await one<{ n: string }>(db, `
    WITH r AS (SELECT book_id, user_id, count(*) AS n FROM voucher.redemptions WHERE state = 'redeemed' GROUP BY 1, 2)
    SELECT count(*) FILTER (WHERE coalesce(r.n, 0) <> coalesce(u.redemptions, 0)) AS n
      FROM r FULL JOIN voucher.book_users u ON u.book_id = r.book_id AND u.user_id = r.user_id`);
  checks.push(check("per-user redemption counts match the redemptions", Number(redeemedBy.n) === 0, `${redeemedBy.n} (book, user) pairs disagree`));

  const grants = await one<{ n: string; dup: string }>(db, `
    SELECT count(*) AS n, count(*) - count(DISTINCT grant_id) AS dup FROM voucher.codes WHERE grant_id IS NOT NULL`);
  checks.push(check("no grant holds two vouchers", Number(grants.dup) === 0, `${grants.n} vouchers issued for grants, ${grants.dup} duplicates`));
  return checks;
}

/** Redemptions per order reference (the scenarios make one reference per logical redeem). */
export async function redemptionsByOrder(db: Sql, prefix: string): Promise<Map<string, number>> {
  const r = await rows<{ order_reference: string; n: string }>(db, `
    SELECT order_reference, count(*) AS n FROM voucher.redemptions WHERE order_reference LIKE $1 || '%' AND state = 'redeemed' GROUP BY 1`, [prefix]);
  return new Map(r.map((x) => [x.order_reference, Number(x.n)]));
}

// ── provider ─────────────────────────────────────────────────────────────────────────────

export const FINAL_PROVIDER_STATES = ["delivered", "failed", "expired"];

export async function providerStates(db: Sql, where = "true", values: unknown[] = []): Promise<Record<string, number>> {
  const r = await rows<{ state: string; n: string }>(db, `SELECT state, count(*) AS n FROM provider.code_requests WHERE ${where} GROUP BY 1`, values);
  return Object.fromEntries(r.map((x) => [x.state, Number(x.n)]));
}

/**
 * Each request ends in exactly one final state; each one that got a code has exactly one
 * stored purchased code (the same code) and exactly one `code_received` event.
 */
export async function providerInvariants(db: Sql, ids: string[]): Promise<Check[]> {
  const checks: Check[] = [];
  const states = await providerStates(db, "id = ANY($1)", [ids]);
  const final = FINAL_PROVIDER_STATES.reduce((n, s) => n + (states[s] ?? 0), 0);
  const found = Object.values(states).reduce((a, b) => a + b, 0);
  checks.push(check("each provider request in exactly one final state", final === ids.length && found === ids.length,
    `${ids.length} requests: ${Object.entries(states).map(([s, n]) => `${s} ${n}`).join(", ") || "none found"}`));

  const codes = await one<{ with_code: string; stored: string; wrong: string; dup: string }>(db, `
    SELECT count(*) FILTER (WHERE r.code IS NOT NULL) AS with_code,
           count(p.id) AS stored,
           count(*) FILTER (WHERE p.id IS NOT NULL AND p.code <> r.code) AS wrong,
           (SELECT count(*) - count(DISTINCT code_request_id) FROM voucher.purchased_codes) AS dup
      FROM provider.code_requests r LEFT JOIN voucher.purchased_codes p ON p.code_request_id = r.id
     WHERE r.id = ANY($1)`, [ids]);
  const ok = Number(codes.with_code) === Number(codes.stored) && Number(codes.wrong) === 0 && Number(codes.dup) === 0;
  checks.push(check("each code bought is stored exactly once, as bought", ok,
    `${codes.with_code} requests with a code, ${codes.stored} stored, ${codes.wrong} differ, ${codes.dup} stored twice`));

  const early = await one<{ n: string; delivered: string }>(db, `
    SELECT count(*) FILTER (WHERE p.id IS NULL OR p.created_at > r.delivered_at) AS n, count(*) AS delivered
      FROM provider.code_requests r LEFT JOIN voucher.purchased_codes p ON p.code_request_id = r.id
     WHERE r.id = ANY($1) AND r.state = 'delivered'`, [ids]);
  checks.push(check("no code delivered before it was stored", Number(early.n) === 0, `${early.delivered} delivered, ${early.n} of them before their code was stored`));

  const events = await rows<{ payload: Buffer }>(db, `SELECT payload FROM provider.outbox WHERE subject = 'provider.code_received'`);
  const perRequest = new Map<string, number>();
  for (const e of events) {
    const id = fromBinary(CodeReceivedSchema, e.payload).codeRequestId;
    perRequest.set(id, (perRequest.get(id) ?? 0) + 1);
  }
  const twice = ids.filter((id) => (perRequest.get(id) ?? 0) > 1).length;
  const missing = Number(codes.with_code) - ids.filter((id) => perRequest.has(id)).length;
  checks.push(check("one code_received event per code", twice === 0 && missing === 0, `${events.length} events, ${twice} requests with two or more, ${missing} codes without one`));
  return checks;
}
