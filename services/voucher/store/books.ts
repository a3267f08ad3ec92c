// Books: rows ↔ domain, and the statements that change them.
import { sql, type Kysely, type RawBuilder, type Selectable } from "kysely";
import type { Book, BookSettings, BookState, Money } from "../domain/model.js";
import { bookCurrency } from "../domain/model.js";
import type { BooksTable, VoucherDB } from "./schema.js";

type Db = Kysely<VoucherDB>;

const money = (minor: string | null, currency: string | null): Money | null =>
  minor === null || currency === null ? null : { minor: BigInt(minor), currency };
const date = (d: Date | string | null): Date | null => (d === null ? null : new Date(d));

/** Maps a books row (or the `b_`-prefixed book columns of a join) to the domain. */
export function toBook(row: Record<string, any>, prefix = ""): Book {
  const r = (k: keyof Selectable<BooksTable>) => row[prefix + k];
  const currency = r("currency") as string | null;
  return {
    id: r("id"),
    name: r("name"),
    description: r("description"),
    discount:
      r("discount_percent_bp") !== null
        ? { kind: "percent", basisPoints: r("discount_percent_bp"), cap: money(r("discount_cap_minor"), currency) }
        : { kind: "amount", amount: money(r("discount_amount_minor"), currency)! },
    minimumOrder: money(r("minimum_order_minor"), currency),
    startAt: date(r("start_at")),
    endAt: date(r("end_at")),
    codeValidityMs: r("code_validity_ms") === null ? null : Number(r("code_validity_ms")),
    codePattern: r("code_pattern"),
    usesPerCode: r("uses_per_code"),
    maxCodesPerUser: r("max_codes_per_user"),
    maxRedemptionsPerUser: r("max_redemptions_per_user"),
    autoTopUpThreshold: r("auto_top_up_threshold"),
    autoTopUpBatchSize: r("auto_top_up_batch_size"),
    state: r("state"),
    generatedCount: BigInt(r("generated_count")),
    importedCount: BigInt(r("imported_count")),
    createdAt: new Date(r("created_at")),
    updatedAt: new Date(r("updated_at")),
  };
}

/** The book columns for a join, each as `b_<column>`. */
export const BOOK_COLUMNS: RawBuilder<unknown> = sql.raw(
  [
    "id", "name", "description", "discount_percent_bp", "discount_cap_minor", "discount_amount_minor", "currency",
    "minimum_order_minor", "start_at", "end_at", "code_validity_ms", "code_pattern", "uses_per_code",
    "max_codes_per_user", "max_redemptions_per_user", "auto_top_up_threshold", "auto_top_up_batch_size", "state",
    "generated_count", "imported_count", "created_at", "updated_at",
  ]
    .map((c) => `b.${c} AS b_${c}`)
    .join(", "),
);

/** Settings → columns (every settings column, for insert and full update). */
export function settingsColumns(s: Partial<BookSettings>): Partial<Record<keyof BooksTable, unknown>> {
  const out: Partial<Record<keyof BooksTable, unknown>> = {};
  if (s.name !== undefined) out.name = s.name;
  if (s.description !== undefined) out.description = s.description;
  if (s.discount !== undefined || s.minimumOrder !== undefined) {
    // Discount and minimum share the one currency column: callers pass both together.
    const d = s.discount!;
    out.discount_percent_bp = d.kind === "percent" ? d.basisPoints : null;
    out.discount_cap_minor = d.kind === "percent" && d.cap ? d.cap.minor.toString() : null;
    out.discount_amount_minor = d.kind === "amount" ? d.amount.minor.toString() : null;
    out.minimum_order_minor = s.minimumOrder ? s.minimumOrder.minor.toString() : null;
    out.currency = bookCurrency({ discount: d, minimumOrder: s.minimumOrder ?? null });
  }
  if (s.startAt !== undefined) out.start_at = s.startAt;
  if (s.endAt !== undefined) out.end_at = s.endAt;
  if (s.codeValidityMs !== undefined) out.code_validity_ms = s.codeValidityMs;
  if (s.codePattern !== undefined) out.code_pattern = s.codePattern;
  if (s.usesPerCode !== undefined) out.uses_per_code = s.usesPerCode;
  if (s.maxCodesPerUser !== undefined) out.max_codes_per_user = s.maxCodesPerUser;
  if (s.maxRedemptionsPerUser !== undefined) out.max_redemptions_per_user = s.maxRedemptionsPerUser;
  if (s.autoTopUpThreshold !== undefined) out.auto_top_up_threshold = s.autoTopUpThreshold;
  if (s.autoTopUpBatchSize !== undefined) out.auto_top_up_batch_size = s.autoTopUpBatchSize;
  return out;
}

export async function insertBook(db: Db, id: string, settings: BookSettings): Promise<Book> {
  const row = await db
    .insertInto("books")
    .values({ id, state: "draft", ...(settingsColumns(settings) as any) })
    .returningAll()
    .executeTakeFirstOrThrow();
  return toBook(row);
}

export async function findBook(db: Db, id: string): Promise<Book | undefined> {
  const row = await db.selectFrom("books").selectAll().where("id", "=", id).executeTakeFirst();
  return row && toBook(row);
}

export async function listBooks(db: Db, opts: { state?: BookState; beforeId?: string; limit: number }): Promise<Book[]> {
  let q = db.selectFrom("books").selectAll().orderBy("id", "desc").limit(opts.limit);
  if (opts.state) q = q.where("state", "=", opts.state);
  if (opts.beforeId) q = q.where("id", "<", opts.beforeId);
  return (await q.execute()).map((r) => toBook(r));
}

/**
 * Applies new settings. When `frozenToo` is set the update only happens while the book is
 * a draft (the condition is part of the UPDATE, so a concurrent activation cannot slip in).
 */
export async function updateBookSettings(db: Db, id: string, settings: Partial<BookSettings>, frozenToo: boolean): Promise<Book | undefined> {
  let q = db
    .updateTable("books")
    .set({ ...(settingsColumns(settings) as any), updated_at: sql`now()` })
    .where("id", "=", id);
  if (frozenToo) q = q.where("state", "=", "draft");
  const row = await q.returningAll().executeTakeFirst();
  return row && toBook(row);
}

/** Moves a book to `to` only from one of `from`: one conditional update. */
export async function transitionBook(db: Db, id: string, from: BookState[], to: BookState): Promise<Book | undefined> {
  const row = await db
    .updateTable("books")
    .set({ state: to, updated_at: sql`now()` })
    .where("id", "=", id)
    .where("state", "in", from)
    .returningAll()
    .executeTakeFirst();
  return row && toBook(row);
}

export async function addCodeCounts(db: Db, bookId: string, generated: number, imported: number): Promise<void> {
  if (generated === 0 && imported === 0) return;
  await db
    .updateTable("books")
    .set({
      generated_count: sql`generated_count + ${generated}::bigint` as any,
      imported_count: sql`imported_count + ${imported}::bigint` as any,
    })
    .where("id", "=", bookId)
    .execute();
}

export interface BookCounts {
  free: number;
  assigned: number;
  reserved: number;
  redeemed: number;
  expired: number;
  redemptions: number;
  rolledBack: number;
  computedAt: Date;
}

/**
 * Counts a book's codes by state in one pass; the CASE is `voucherState` of the domain
 * (redeemed, then expired, then free, reserved, assigned).
 */
export async function countCodesByState(db: Db, bookId: string): Promise<BookCounts> {
  const { rows } = await sql<{ state: string; n: string }>`
    SELECT ${voucherStateSql} AS state, count(*) AS n
    FROM codes c JOIN books b ON b.id = c.book_id
    WHERE c.book_id = ${bookId}
    GROUP BY 1`.execute(db);
  const by = Object.fromEntries(rows.map((r) => [r.state, Number(r.n)]));
  const { rows: red } = await sql<{ redeemed: string; rolled_back: string; now: Date }>`
    SELECT count(*) FILTER (WHERE state = 'redeemed') AS redeemed, count(*) FILTER (WHERE state = 'rolled_back') AS rolled_back, now() AS now
    FROM redemptions WHERE book_id = ${bookId}`.execute(db);
  return {
    free: by.free ?? 0,
    assigned: by.assigned ?? 0,
    reserved: by.reserved ?? 0,
    redeemed: by.redeemed ?? 0,
    expired: by.expired ?? 0,
    redemptions: Number(red[0].redeemed),
    rolledBack: Number(red[0].rolled_back),
    computedAt: red[0].now,
  };
}

/** The expiry of code `c` of book `b` as SQL (null: never), mirroring `expireTime`. */
export const expireAtSql = sql`least(b.end_at, c.assigned_at + b.code_validity_ms * interval '1 millisecond')`;

/** A voucher's state as SQL, mirroring `voucherState` in the domain. */
export const voucherStateSql = sql<string>`CASE
  WHEN c.use_count >= b.uses_per_code THEN 'redeemed'
  WHEN ${expireAtSql} <= now() THEN 'expired'
  WHEN c.owner_user_id IS NULL THEN 'free'
  WHEN c.lease_expires_at > now() THEN 'reserved'
  ELSE 'assigned' END`;

/** Active books with auto top-up on whose free codes are below the threshold and that have no top-up job running. */
export async function booksNeedingTopUp(db: Db, limit: number): Promise<Book[]> {
  const { rows } = await sql<Record<string, any>>`
    SELECT b.* FROM books b
    WHERE b.state = 'active' AND b.auto_top_up_threshold > 0 AND b.code_pattern <> ''
      AND (b.end_at IS NULL OR b.end_at > now())
      AND NOT EXISTS (SELECT 1 FROM generation_jobs j WHERE j.book_id = b.id AND j.trigger = 'auto_top_up' AND j.state IN ('queued', 'running'))
      AND (SELECT count(*) FROM (SELECT 1 FROM codes c WHERE c.book_id = b.id AND c.owner_user_id IS NULL LIMIT b.auto_top_up_threshold) f) < b.auto_top_up_threshold
    ORDER BY b.id
    LIMIT ${limit}`.execute(db);
  return rows.map((r) => toBook(r));
}
