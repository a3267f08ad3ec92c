// Campaign rows. Slots are taken here, and only here, by one conditional update per
// campaign: `granted = granted + 1 WHERE granted < quota AND state = 'active' …`. Postgres
// serialises concurrent updates of the row, re-checks the condition on the newest version
// and the CHECK (granted <= quota) backs it, so no interleaving of replicas can pass quota.
import { sql, type Kysely, type Selectable, type Transaction } from "kysely";
import type { Campaign, CampaignState, CampaignType, Discount, Money, VoucherTerms } from "../domain/model.js";
import type { CampaignTable, PromotionDB, StoredDiscount } from "./schema.js";

type Db = Kysely<PromotionDB> | Transaction<PromotionDB>;

const money = (minor: string | null, currency: string | null): Money | undefined =>
  minor !== null && currency !== null ? { minor: BigInt(minor), currency } : undefined;

export function discountIn(d: StoredDiscount): Discount {
  return d.kind === "percent"
    ? { kind: "percent", basisPoints: d.basisPoints, cap: money(d.capMinor ?? null, d.capCurrency ?? null) }
    : { kind: "amount", amount: { minor: BigInt(d.minor), currency: d.currency } };
}

export function discountStored(d: Discount): StoredDiscount {
  return d.kind === "percent"
    ? { kind: "percent", basisPoints: d.basisPoints, ...(d.cap ? { capMinor: d.cap.minor.toString(), capCurrency: d.cap.currency } : {}) }
    : { kind: "amount", minor: d.amount.minor.toString(), currency: d.amount.currency };
}

export function campaignIn(r: Selectable<CampaignTable>): Campaign {
  return {
    id: r.id,
    name: r.name,
    description: r.description,
    type: r.type,
    quota: r.quota,
    granted: r.granted,
    state: r.state,
    terms: {
      discount: discountIn(r.discount),
      minimum: money(r.minimum_minor, r.minimum_currency),
      validityDays: r.validity_days,
      codePattern: r.code_pattern,
    },
    startAt: r.start_at,
    endAt: r.end_at,
    activatedAt: r.activated_at,
    bookId: r.book_id,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

export interface NewCampaign {
  id: string;
  name: string;
  description: string;
  type: CampaignType;
  quota: number;
  terms: VoucherTerms;
  startAt: Date | null;
  endAt: Date | null;
  bookId: string;
}

export async function insertCampaign(db: Db, c: NewCampaign): Promise<Campaign> {
  const row = await db
    .insertInto("campaigns")
    .values({
      id: c.id,
      name: c.name,
      description: c.description,
      type: c.type,
      quota: c.quota,
      discount: JSON.stringify(discountStored(c.terms.discount)),
      minimum_minor: c.terms.minimum?.minor ?? null,
      minimum_currency: c.terms.minimum?.currency ?? null,
      validity_days: c.terms.validityDays,
      code_pattern: c.terms.codePattern,
      start_at: c.startAt,
      end_at: c.endAt,
      activated_at: null,
      book_id: c.bookId,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
  return campaignIn(row);
}

export async function findCampaign(db: Db, id: string, opts: { forUpdate?: boolean } = {}): Promise<Campaign | undefined> {
  let q = db.selectFrom("campaigns").selectAll().where("id", "=", id);
  if (opts.forUpdate) q = q.forUpdate();
  const row = await q.executeTakeFirst();
  return row && campaignIn(row);
}

export async function findCampaigns(db: Db, ids: string[]): Promise<Map<string, Campaign>> {
  if (!ids.length) return new Map();
  const rows = await db.selectFrom("campaigns").selectAll().where("id", "in", ids).execute();
  return new Map(rows.map((r) => [r.id, campaignIn(r)]));
}

export interface CampaignFilter {
  state?: CampaignState;
  type?: CampaignType;
}

/** Newest first, after `beforeId` (keyset paging on the UUIDv7 id). */
export async function listCampaigns(db: Db, filter: CampaignFilter, beforeId: string | undefined, limit: number): Promise<Campaign[]> {
  let q = db.selectFrom("campaigns").selectAll().orderBy("id", "desc").limit(limit);
  if (filter.state) q = q.where("state", "=", filter.state);
  if (filter.type) q = q.where("type", "=", filter.type);
  if (beforeId) q = q.where("id", "<", beforeId);
  return (await q.execute()).map(campaignIn);
}

/** Where a page of public campaigns ends: their end time (infinity when none) and id. */
export type ActivePosition = [string, string];

/** ACTIVE campaigns not past their end, soonest ending first (open-ended ones last). */
export async function listActiveCampaigns(db: Db, after: ActivePosition | undefined, limit: number): Promise<Campaign[]> {
  const endKey = sql<string>`coalesce(end_at, 'infinity'::timestamptz)`;
  let q = db
    .selectFrom("campaigns")
    .selectAll()
    .where("state", "=", "active")
    .where((eb) => eb.or([eb("end_at", "is", null), eb("end_at", ">", sql<Date>`now()`)]))
    .orderBy(endKey)
    .orderBy("id")
    .limit(limit);
  if (after) q = q.where(sql<boolean>`(${endKey}, id) > (${after[0]}::timestamptz, ${after[1]})`);
  return (await q.execute()).map(campaignIn);
}

export const activePosition = (c: Campaign): ActivePosition => [c.endAt ? c.endAt.toISOString() : "infinity", c.id];

/**
 * Moves a campaign to `to` if it is in one of `from`; returns the campaign as it is after
 * (moved or not) so the caller can tell "already there" from "cannot go there".
 */
export async function moveCampaign(
  db: Db,
  id: string,
  from: CampaignState[],
  to: CampaignState,
  opts: { notPastEnd?: boolean } = {},
): Promise<{ moved: boolean; campaign: Campaign | undefined }> {
  let q = db
    .updateTable("campaigns")
    .set({ state: to, updated_at: sql<Date>`now()` })
    .where("id", "=", id)
    .where("state", "in", from);
  if (to === "active") q = q.set({ activated_at: sql<Date>`coalesce(activated_at, now())` });
  if (opts.notPastEnd) q = q.where((eb) => eb.or([eb("end_at", "is", null), eb("end_at", ">", sql<Date>`now()`)]));
  const row = await q.returningAll().executeTakeFirst();
  if (row) return { moved: true, campaign: campaignIn(row) };
  return { moved: false, campaign: await findCampaign(db, id) };
}

export interface CampaignChanges {
  name?: string;
  description?: string;
  quota?: number;
  startAt?: Date | null;
  endAt?: Date | null;
  terms?: VoucherTerms;
}

export type UpdateOutcome =
  | { kind: "updated"; campaign: Campaign }
  | { kind: "missing" }
  | { kind: "ended" }
  | { kind: "not_draft" }
  | { kind: "quota_below_granted"; granted: number }
  | { kind: "window_invalid" };

/** Applies the changes in one conditional update; the conditions are the rules (not a prior read). */
export async function updateCampaign(db: Db, id: string, changes: CampaignChanges): Promise<UpdateOutcome> {
  const set: Record<string, unknown> = { updated_at: sql`now()` };
  if (changes.name !== undefined) set.name = changes.name;
  if (changes.description !== undefined) set.description = changes.description;
  if (changes.quota !== undefined) set.quota = changes.quota;
  if (changes.startAt !== undefined) set.start_at = changes.startAt;
  if (changes.endAt !== undefined) set.end_at = changes.endAt;
  if (changes.terms) {
    set.discount = JSON.stringify(discountStored(changes.terms.discount));
    set.minimum_minor = changes.terms.minimum?.minor.toString() ?? null;
    set.minimum_currency = changes.terms.minimum?.currency ?? null;
    set.validity_days = changes.terms.validityDays;
    set.code_pattern = changes.terms.codePattern;
  }
  try {
    let q = db.updateTable("campaigns").set(set).where("id", "=", id).where("state", "<>", "ended");
    if (changes.terms) q = q.where("state", "=", "draft");
    if (changes.quota !== undefined) q = q.where("granted", "<=", changes.quota);
    const row = await q.returningAll().executeTakeFirst();
    if (row) return { kind: "updated", campaign: campaignIn(row) };
  } catch (err) {
    if ((err as { constraint?: string }).constraint === "campaigns_window") return { kind: "window_invalid" };
    throw err;
  }
  const now = await findCampaign(db, id);
  if (!now) return { kind: "missing" };
  if (now.state === "ended") return { kind: "ended" };
  if (changes.terms && now.state !== "draft") return { kind: "not_draft" };
  if (changes.quota !== undefined && now.granted > changes.quota) return { kind: "quota_below_granted", granted: now.granted };
  // The row changed between the update and this read (a concurrent grant or state change): let the caller retry.
  throw Object.assign(new Error("campaign changed concurrently"), { code: "40001" });
}

export interface Slot {
  campaignId: string;
  bookId: string;
}

/**
 * Takes one slot in every first-login campaign that was running at `loginAt` and in which
 * the user has no grant yet. The NOT EXISTS makes a replayed login (under a new event id)
 * take nothing; the unique (campaign, user) grant that the caller inserts next, in the same
 * transaction, backs it when two such replays race.
 */
export async function takeFirstLoginSlots(trx: Transaction<PromotionDB>, userId: string, loginAt: Date): Promise<Slot[]> {
  // The running campaigns are locked in id order before any is updated: two logins taking
  // slots of the same two campaigns then queue on the first instead of deadlocking, which
  // a plain multi-row UPDATE (rows locked in whatever order the scan meets them) can do.
  const rows = await trx
    .with("eligible", (db) =>
      db
        .selectFrom("campaigns as c")
        .select("c.id")
        .where("c.type", "=", "first_login")
        .where("c.state", "=", "active")
        .where(sql<boolean>`c.granted < c.quota`)
        .where(sql<boolean>`greatest(c.start_at, c.activated_at) <= ${loginAt}`)
        .where((eb) => eb.or([eb("c.end_at", "is", null), eb("c.end_at", ">", loginAt)]))
        .where(({ not, exists, selectFrom }) =>
          not(exists(selectFrom("grants as g").select("g.id").whereRef("g.campaign_id", "=", "c.id").where("g.user_id", "=", userId))),
        )
        .orderBy("c.id")
        .forUpdate(),
    )
    .updateTable("campaigns as c")
    .from("eligible as e")
    .set({ granted: sql`c.granted + 1`, updated_at: sql`now()` })
    .whereRef("c.id", "=", "e.id")
    // Re-checked on the locked row: the quota is still the database's, never a stale read.
    .where(sql<boolean>`c.granted < c.quota`)
    .returning(["c.id", "c.book_id"])
    .execute();
  return rows.map((r) => ({ campaignId: r.id, bookId: r.book_id }));
}

/** Takes one slot of a running claim campaign, or returns undefined (the caller explains why). */
export async function takeClaimSlot(trx: Transaction<PromotionDB>, campaignId: string): Promise<Slot | undefined> {
  const row = await trx
    .updateTable("campaigns")
    .set({ granted: sql`granted + 1`, updated_at: sql`now()` })
    .where("id", "=", campaignId)
    .where("type", "=", "claim")
    .where("state", "=", "active")
    .where(sql<boolean>`granted < quota`)
    .where((eb) => eb.or([eb("start_at", "is", null), eb("start_at", "<=", sql<Date>`now()`)]))
    .where((eb) => eb.or([eb("end_at", "is", null), eb("end_at", ">", sql<Date>`now()`)]))
    .returning(["id", "book_id"])
    .executeTakeFirst();
  return row && { campaignId: row.id, bookId: row.book_id };
}

/** Ends campaigns whose end time has passed ("a campaign also ends by itself"). */
export async function endOverdueCampaigns(db: Db): Promise<number> {
  const res = await db
    .updateTable("campaigns")
    .set({ state: "ended", updated_at: sql<Date>`now()` })
    .where("state", "in", ["active", "paused"])
    .where("end_at", "<=", sql<Date>`now()`)
    .executeTakeFirst();
  return Number(res.numUpdatedRows);
}
