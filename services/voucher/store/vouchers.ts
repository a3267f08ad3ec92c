// Codes (vouchers), their per-user counters, reservations and redemptions.
//
// Every statement that enforces a limit is one conditional UPDATE (or upsert) whose WHERE
// holds the whole rule, so the database decides under any concurrency; when it changes no
// row, the caller reads the row again only to say why. Locks are always taken in the same
// order: request id → code row → reservation row → the user's counter row.
import { sql, type Kysely, type Transaction } from "kysely";
import { prepared } from "../../kit/db.js";
import type { Money, Voucher, VoucherState } from "../domain/model.js";
import { BOOK_COLUMNS, expireAtSql, toBook, voucherStateSql } from "./books.js";
import type { VoucherDB } from "./schema.js";

type Db = Kysely<VoucherDB> | Transaction<VoucherDB>;
type Row = Record<string, any>;

export function toVoucher(row: Row): Voucher {
  return {
    id: row.id,
    book: toBook(row, "b_"),
    code: row.code,
    ownerUserId: row.owner_user_id,
    grantId: row.grant_id,
    assignedAt: row.assigned_at ? new Date(row.assigned_at) : null,
    useCount: row.use_count,
    fence: BigInt(row.fence),
    leaseExpiresAt: row.lease_expires_at ? new Date(row.lease_expires_at) : null,
    lastRedeemedAt: row.last_redeemed_at ? new Date(row.last_redeemed_at) : null,
    createdAt: new Date(row.created_at),
  };
}

const CODE_COLUMNS = sql.raw(
  ["id", "book_id", "code", "owner_user_id", "grant_id", "assigned_at", "use_count", "fence", "lease_expires_at", "last_redeemed_at", "created_at"]
    .map((c) => `c.${c}`)
    .join(", "),
);

/** The database's clock: every time rule is judged by it, never by a replica's clock. */
export async function dbNow(db: Db): Promise<Date> {
  const { rows } = await sql<{ now: Date }>`SELECT now() AS now`.execute(db);
  return rows[0].now;
}

export interface VoucherLookup {
  voucher: Voucher | undefined;
  /** The user's redemptions in effect in the voucher's book. */
  userRedemptions: number;
  now: Date;
}

/** A code with its book and `userId`'s redemption count, in one read. */
export async function findByCode(db: Db, code: string, userId: string): Promise<VoucherLookup> {
  // Validate's one statement: prepared, its plan is most of its Postgres cost.
  const { rows } = await prepared(sql<Row>`
    SELECT ${CODE_COLUMNS}, ${BOOK_COLUMNS}, coalesce(bu.redemptions, 0) AS user_redemptions, now() AS now
    FROM (SELECT now()) t
    LEFT JOIN codes c ON c.code = ${code}
    LEFT JOIN books b ON b.id = c.book_id
    LEFT JOIN book_users bu ON bu.book_id = c.book_id AND bu.user_id = ${userId}`).execute(db);
  const row = rows[0];
  return { voucher: row.id ? toVoucher(row) : undefined, userRedemptions: Number(row.user_redemptions), now: row.now };
}

export async function findById(db: Db, id: string): Promise<Voucher | undefined> {
  const { rows } = await sql<Row>`SELECT ${CODE_COLUMNS}, ${BOOK_COLUMNS} FROM codes c JOIN books b ON b.id = c.book_id WHERE c.id = ${id}`.execute(db);
  return rows[0] && toVoucher(rows[0]);
}

export async function findByIds(db: Db, ids: string[]): Promise<Voucher[]> {
  if (ids.length === 0) return [];
  const { rows } = await sql<Row>`SELECT ${CODE_COLUMNS}, ${BOOK_COLUMNS} FROM codes c JOIN books b ON b.id = c.book_id WHERE c.id = ANY(${ids}::text[])`.execute(db);
  return rows.map(toVoucher);
}

export async function findByGrant(db: Db, grantId: string): Promise<Voucher | undefined> {
  const { rows } = await sql<Row>`SELECT ${CODE_COLUMNS}, ${BOOK_COLUMNS} FROM codes c JOIN books b ON b.id = c.book_id WHERE c.grant_id = ${grantId}`.execute(db);
  return rows[0] && toVoucher(rows[0]);
}

/**
 * Claims a free code of the book for the user: the first free code at or after a random
 * pick, skipping codes other transactions are claiming. `codes_free_pick` is the only
 * index ordered by pick, so this walks free codes of this book only.
 */
export async function claimFreeCode(trx: Db, bookId: string, userId: string, grantId: string | null, startPick: number): Promise<Voucher | undefined> {
  for (const start of [startPick, 0]) {
    const { rows } = await sql<Row>`
      UPDATE codes c SET owner_user_id = ${userId}, assigned_at = now(), grant_id = ${grantId}
      FROM books b
      WHERE c.id = (
          SELECT f.id FROM codes f
          WHERE f.book_id = ${bookId} AND f.owner_user_id IS NULL AND f.pick >= ${start}
          ORDER BY f.pick
          LIMIT 1
          FOR UPDATE SKIP LOCKED)
        AND b.id = c.book_id
      RETURNING ${CODE_COLUMNS}, ${BOOK_COLUMNS}`.execute(trx);
    if (rows[0]) return toVoucher(rows[0]);
  }
  return undefined;
}

/** Claims one specific free code of the book. */
export async function claimSpecificCode(trx: Db, bookId: string, code: string, userId: string): Promise<Voucher | undefined> {
  const { rows } = await sql<Row>`
    UPDATE codes c SET owner_user_id = ${userId}, assigned_at = now()
    FROM books b
    WHERE c.code = ${code} AND c.book_id = ${bookId} AND c.owner_user_id IS NULL AND b.id = c.book_id
    RETURNING ${CODE_COLUMNS}, ${BOOK_COLUMNS}`.execute(trx);
  return rows[0] && toVoucher(rows[0]);
}

/** One more code held by the user in the book, unless that would pass `max` (0: no limit). */
export async function countHolding(trx: Db, bookId: string, userId: string, max: number): Promise<boolean> {
  const { rows } = await sql`
    INSERT INTO book_users (book_id, user_id, codes_held, redemptions) VALUES (${bookId}, ${userId}, 1, 0)
    ON CONFLICT (book_id, user_id) DO UPDATE SET codes_held = book_users.codes_held + 1
    WHERE ${max}::integer = 0 OR book_users.codes_held < ${max}::integer
    RETURNING codes_held`.execute(trx);
  return rows.length === 1;
}

/** The shared part of "this code can be used by this user now" for reserve and redeem. */
const usableSql = (userId: string, order: Money | undefined) => sql`
  c.owner_user_id = ${userId}
  AND b.state = 'active'
  AND (b.start_at IS NULL OR b.start_at <= now())
  AND NOT coalesce(${expireAtSql} <= now(), false)
  AND c.use_count < b.uses_per_code
  AND (${order?.currency ?? null}::text IS NULL OR b.currency IS NULL OR b.currency = ${order?.currency ?? null}::text)
  AND (${order ? order.minor.toString() : null}::bigint IS NULL OR b.minimum_order_minor IS NULL OR b.minimum_order_minor <= ${order ? order.minor.toString() : null}::bigint)`;

export interface RedeemAttempt {
  code: string;
  userId: string;
  order: Money;
  /** The held reservation (its fence and id), or null to redeem without one. */
  reservation: { id: string; fence: bigint } | null;
  redemptionId: string;
  orderReference: string;
}

export interface RedeemOutcome {
  /** The code after taking its use; undefined when the use could not be taken (the caller explains why). */
  voucher: Voucher | undefined;
  /** False when the reservation was released or used meanwhile. */
  reservationUsed: boolean;
  /** False when the user's per-book redemption limit refused it. */
  counted: boolean;
  /** Present only when all of the above held. */
  redemption: RedemptionRow | undefined;
}

/**
 * A redemption in one statement: take one use of the code (the single winner among
 * concurrent attempts is whoever updates the row first; the others re-check the WHERE
 * against the new row and change nothing; with a reservation its fence must still be the
 * code's latest, without one no live lease may hold the code), mark the
 * reservation used, count the user's redemption within the book's limit, and insert the
 * redemption, each step only if the previous ones held. When a later step refuses, the
 * earlier ones have still been applied: the caller throws, which rolls the transaction back.
 * The discount is computed here from the book's columns as `computeDiscount` does, and the
 * caller checks the two agree.
 */
export async function redeemOnce(trx: Db, a: RedeemAttempt): Promise<RedeemOutcome> {
  const fence = a.reservation?.fence ?? null;
  const reservationId = a.reservation?.id ?? null;
  const leaseRule =
    fence === null
      ? sql`(c.lease_expires_at IS NULL OR c.lease_expires_at <= now())`
      : sql`c.fence = ${fence.toString()}::bigint`;
  const orderMinor = a.order.minor.toString();
  // Prepared: planning this five-part statement costs Postgres more than running it.
  const { rows } = await prepared(sql<Row>`
    WITH used AS (
      UPDATE codes c SET use_count = c.use_count + 1, last_redeemed_at = now(),
        lease_expires_at = ${fence === null ? sql`c.lease_expires_at` : sql`NULL`}
      FROM books b
      WHERE c.code = ${a.code} AND b.id = c.book_id AND ${usableSql(a.userId, a.order)} AND ${leaseRule}
      RETURNING ${CODE_COLUMNS}, ${BOOK_COLUMNS}
    ), reserved AS (
      UPDATE reservations SET used_at = now()
      WHERE id = ${reservationId}::text AND released_at IS NULL AND used_at IS NULL AND EXISTS (SELECT 1 FROM used)
      RETURNING id
    ), counted AS (
      INSERT INTO book_users AS bu (book_id, user_id, codes_held, redemptions)
      SELECT u.book_id, ${a.userId}, 0, 1 FROM used u
      WHERE ${reservationId}::text IS NULL OR EXISTS (SELECT 1 FROM reserved)
      ON CONFLICT (book_id, user_id) DO UPDATE SET redemptions = bu.redemptions + 1
      WHERE (SELECT u.b_max_redemptions_per_user FROM used u) = 0 OR bu.redemptions < (SELECT u.b_max_redemptions_per_user FROM used u)
      RETURNING redemptions
    ), redemption AS (
      INSERT INTO redemptions (id, code_id, book_id, user_id, code, order_reference, order_minor, currency, discount_minor, state, reservation_id)
      SELECT ${a.redemptionId}, u.id, u.book_id, ${a.userId}, u.code, ${a.orderReference}, ${orderMinor}::bigint, ${a.order.currency},
        GREATEST(0, LEAST(${orderMinor}::bigint,
          CASE WHEN u.b_discount_percent_bp IS NOT NULL
            THEN LEAST(div(${orderMinor}::numeric * u.b_discount_percent_bp, 10000)::bigint, coalesce(u.b_discount_cap_minor, ${orderMinor}::bigint))
            ELSE u.b_discount_amount_minor END)),
        'redeemed', ${reservationId}::text
      FROM used u WHERE EXISTS (SELECT 1 FROM counted)
      RETURNING redeemed_at, discount_minor
    )
    SELECT u.*, EXISTS (SELECT 1 FROM reserved) AS reservation_used, EXISTS (SELECT 1 FROM counted) AS counted,
      r.redeemed_at AS r_redeemed_at, r.discount_minor AS r_discount_minor
    FROM (SELECT 1) one LEFT JOIN used u ON true LEFT JOIN redemption r ON true`).execute(trx);
  const row = rows[0];
  const voucher = row.id ? toVoucher(row) : undefined;
  const redemption: RedemptionRow | undefined =
    voucher && row.r_redeemed_at
      ? {
          id: a.redemptionId,
          codeId: voucher.id,
          bookId: voucher.book.id,
          userId: a.userId,
          code: voucher.code,
          orderReference: a.orderReference,
          order: a.order,
          discount: { minor: BigInt(row.r_discount_minor), currency: a.order.currency },
          state: "redeemed",
          redeemedAt: new Date(row.r_redeemed_at),
          rolledBackAt: null,
          rollbackReason: null,
        }
      : undefined;
  return { voucher, reservationUsed: row.reservation_used, counted: row.counted, redemption };
}

/** Takes a lease on the code: a new, larger fencing token and an expiry. */
export async function takeLease(trx: Db, code: string, userId: string, order: Money | undefined, ttlMs: number): Promise<Voucher | undefined> {
  const { rows } = await sql<Row>`
    UPDATE codes c SET fence = c.fence + 1, lease_expires_at = now() + ${ttlMs}::bigint * interval '1 millisecond'
    FROM books b
    WHERE c.code = ${code} AND b.id = c.book_id AND ${usableSql(userId, order)}
      AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
      AND (b.max_redemptions_per_user = 0 OR b.max_redemptions_per_user > coalesce(
            (SELECT bu.redemptions FROM book_users bu WHERE bu.book_id = b.id AND bu.user_id = ${userId}), 0))
    RETURNING ${CODE_COLUMNS}, ${BOOK_COLUMNS}`.execute(trx);
  return rows[0] && toVoucher(rows[0]);
}

export interface ReservationRow {
  id: string;
  /** The reserved code's text. */
  code: string;
  codeId: string;
  userId: string;
  fence: bigint;
  createdAt: Date;
  expiresAt: Date;
  releasedAt: Date | null;
  usedAt: Date | null;
}

const toReservation = (r: Row): ReservationRow => ({
  id: r.id,
  code: r.code,
  codeId: r.code_id,
  userId: r.user_id,
  fence: BigInt(r.fence),
  createdAt: new Date(r.created_at),
  expiresAt: new Date(r.expires_at),
  releasedAt: r.released_at ? new Date(r.released_at) : null,
  usedAt: r.used_at ? new Date(r.used_at) : null,
});

export async function insertReservation(trx: Db, r: { id: string; tokenHash: Buffer; voucher: Voucher; userId: string }): Promise<ReservationRow> {
  const row = await trx
    .insertInto("reservations")
    .values({
      id: r.id,
      token_hash: r.tokenHash,
      code_id: r.voucher.id,
      user_id: r.userId,
      fence: r.voucher.fence.toString(),
      created_at: sql`now()` as any,
      expires_at: r.voucher.leaseExpiresAt!,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
  return toReservation({ ...row, code: r.voucher.code });
}

export async function findReservation(db: Db, tokenHash: Buffer): Promise<ReservationRow | undefined> {
  const { rows } = await sql<Row>`
    SELECT r.*, c.code FROM reservations r JOIN codes c ON c.id = r.code_id WHERE r.token_hash = ${tokenHash}`.execute(db);
  return rows[0] && toReservation(rows[0]);
}

/** Ends a reservation's lease if it is still the code's latest and live; then marks it released. */
export async function releaseLease(trx: Db, r: ReservationRow): Promise<boolean> {
  const freed = await sql`
    UPDATE codes SET lease_expires_at = NULL
    WHERE id = ${r.codeId} AND fence = ${r.fence.toString()}::bigint AND lease_expires_at > now()
    RETURNING id`.execute(trx);
  await trx
    .updateTable("reservations")
    .set({ released_at: sql`now()` as any })
    .where("id", "=", r.id)
    .where("released_at", "is", null)
    .where("used_at", "is", null)
    .execute();
  return freed.rows.length === 1;
}

export interface RedemptionRow {
  id: string;
  codeId: string;
  bookId: string;
  userId: string;
  code: string;
  orderReference: string;
  order: Money;
  discount: Money;
  state: "redeemed" | "rolled_back";
  redeemedAt: Date;
  rolledBackAt: Date | null;
  rollbackReason: string | null;
}

const toRedemption = (r: Row): RedemptionRow => ({
  id: r.id,
  codeId: r.code_id,
  bookId: r.book_id,
  userId: r.user_id,
  code: r.code,
  orderReference: r.order_reference,
  order: { minor: BigInt(r.order_minor), currency: r.currency },
  discount: { minor: BigInt(r.discount_minor), currency: r.currency },
  state: r.state,
  redeemedAt: new Date(r.redeemed_at),
  rolledBackAt: r.rolled_back_at ? new Date(r.rolled_back_at) : null,
  rollbackReason: r.rollback_reason,
});

export async function findRedemption(db: Db, id: string): Promise<RedemptionRow | undefined> {
  const row = await db.selectFrom("redemptions").selectAll().where("id", "=", id).executeTakeFirst();
  return row && toRedemption(row);
}

/** Locks a code row: the first lock of every redemption-side change (see the file comment). */
export async function lockCode(trx: Db, codeId: string): Promise<void> {
  await sql`SELECT 1 FROM codes WHERE id = ${codeId} FOR UPDATE`.execute(trx);
}

/**
 * Rolls a redemption back once: the redemption changes state only if it is still in
 * effect, and only then are the use and the user's count given back. The caller holds the
 * code's lock (taken first, as redemptions do).
 */
export async function rollBack(trx: Db, id: string, reason: string): Promise<RedemptionRow | undefined> {
  const row = await trx
    .updateTable("redemptions")
    .set({ state: "rolled_back", rolled_back_at: sql`now()` as any, rollback_reason: reason })
    .where("id", "=", id)
    .where("state", "=", "redeemed")
    .returningAll()
    .executeTakeFirst();
  if (!row) return undefined;
  await sql`UPDATE codes SET use_count = use_count - 1 WHERE id = ${row.code_id}`.execute(trx);
  await sql`UPDATE book_users SET redemptions = redemptions - 1 WHERE book_id = ${row.book_id} AND user_id = ${row.user_id}`.execute(trx);
  return toRedemption(row);
}

export interface RedemptionFilter {
  bookId?: string;
  userId?: string;
  code?: string;
  orderReference?: string;
  state?: "redeemed" | "rolled_back";
  from?: Date;
  to?: Date;
}

export async function listRedemptions(db: Db, f: RedemptionFilter, beforeId: string | undefined, limit: number): Promise<RedemptionRow[]> {
  let q = db.selectFrom("redemptions").selectAll().orderBy("id", "desc").limit(limit);
  if (f.bookId) q = q.where("book_id", "=", f.bookId);
  if (f.userId) q = q.where("user_id", "=", f.userId);
  if (f.code) q = q.where("code", "=", f.code);
  if (f.orderReference) q = q.where("order_reference", "=", f.orderReference);
  if (f.state) q = q.where("state", "=", f.state);
  if (f.from) q = q.where("redeemed_at", ">=", f.from);
  if (f.to) q = q.where("redeemed_at", "<", f.to);
  if (beforeId) q = q.where("id", "<", beforeId);
  return (await q.execute()).map(toRedemption);
}

export interface TimelineBucket {
  start: Date;
  redeemed: number;
  rolledBack: number;
}

export async function redemptionTimeline(db: Db, bookId: string | undefined, from: Date, to: Date, widthMs: number): Promise<TimelineBucket[]> {
  const book = bookId ? sql`AND book_id = ${bookId}` : sql``;
  const width = sql`${widthMs}::bigint * interval '1 millisecond'`;
  const { rows } = await sql<{ bucket: Date; redeemed: string; rolled_back: string }>`
    WITH events AS (
      SELECT date_bin(${width}, redeemed_at, ${from}::timestamptz) AS bucket, 1 AS redeemed, 0 AS rolled_back
        FROM redemptions WHERE state = 'redeemed' AND redeemed_at >= ${from} AND redeemed_at < ${to} ${book}
      UNION ALL
      SELECT date_bin(${width}, rolled_back_at, ${from}::timestamptz), 0, 1
        FROM redemptions WHERE rolled_back_at >= ${from} AND rolled_back_at < ${to} ${book})
    SELECT bucket, sum(redeemed) AS redeemed, sum(rolled_back) AS rolled_back FROM events GROUP BY bucket`.execute(db);
  const counts = new Map(rows.map((r) => [new Date(r.bucket).getTime(), r]));
  const buckets: TimelineBucket[] = [];
  for (let t = from.getTime(); t < to.getTime(); t += widthMs) {
    const r = counts.get(t);
    buckets.push({ start: new Date(t), redeemed: Number(r?.redeemed ?? 0), rolledBack: Number(r?.rolled_back ?? 0) });
  }
  return buckets;
}

export interface VoucherPageRow {
  voucher: Voucher;
  now: Date;
}

/** The caller's vouchers, most recently assigned first, optionally in one state. */
export async function listOwned(db: Db, userId: string, state: VoucherState | undefined, after: { assignedAt: Date; id: string } | undefined, limit: number): Promise<VoucherPageRow[]> {
  const { rows } = await sql<Row>`
    SELECT ${CODE_COLUMNS}, ${BOOK_COLUMNS}, now() AS now FROM codes c JOIN books b ON b.id = c.book_id
    WHERE c.owner_user_id = ${userId}
      ${state ? sql`AND ${voucherStateSql} = ${state}` : sql``}
      ${after ? sql`AND (c.assigned_at, c.id) < (${after.assignedAt}::timestamptz, ${after.id})` : sql``}
    ORDER BY c.assigned_at DESC, c.id DESC
    LIMIT ${limit}`.execute(db);
  return rows.map((r) => ({ voucher: toVoucher(r), now: r.now }));
}

export interface VoucherFilter {
  bookId?: string;
  state?: VoucherState;
  ownerUserId?: string;
  codePrefix?: string;
}

/** Vouchers across books by code order (operators' search and the CSV export). */
export async function listByCode(db: Db, f: VoucherFilter, afterCode: string | undefined, limit: number): Promise<VoucherPageRow[]> {
  const prefixEnd = f.codePrefix ? f.codePrefix.slice(0, -1) + String.fromCharCode(f.codePrefix.charCodeAt(f.codePrefix.length - 1) + 1) : undefined;
  const { rows } = await sql<Row>`
    SELECT ${CODE_COLUMNS}, ${BOOK_COLUMNS}, now() AS now FROM codes c JOIN books b ON b.id = c.book_id
    WHERE true
      ${f.bookId ? sql`AND c.book_id = ${f.bookId}` : sql``}
      ${f.ownerUserId ? sql`AND c.owner_user_id = ${f.ownerUserId}` : sql``}
      ${f.codePrefix ? sql`AND c.code >= ${f.codePrefix} AND c.code < ${prefixEnd}` : sql``}
      ${f.state ? sql`AND ${voucherStateSql} = ${f.state}` : sql``}
      ${afterCode !== undefined ? sql`AND c.code > ${afterCode}` : sql``}
    ORDER BY c.code
    LIMIT ${limit}`.execute(db);
  return rows.map((r) => ({ voucher: toVoucher(r), now: r.now }));
}

/** Adds imported codes; returns the codes that were added (the others already existed). */
export async function insertImported(trx: Db, bookId: string, ids: string[], codes: string[]): Promise<Set<string>> {
  const { rows } = await sql<{ code: string }>`
    INSERT INTO codes (id, book_id, code, source)
    SELECT i, ${bookId}, c, 2 FROM unnest(${ids}::text[], ${codes}::text[]) AS u(i, c)
    ON CONFLICT (code) DO NOTHING
    RETURNING code`.execute(trx);
  return new Set(rows.map((r) => r.code));
}
