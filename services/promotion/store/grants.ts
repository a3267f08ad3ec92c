// Grant rows: at most one per (campaign, user), made in the transaction that took the slot.
import { sql, type Kysely, type Transaction } from "kysely";
import type { CampaignType, Grant, GrantState } from "../domain/model.js";
import type { PromotionDB } from "./schema.js";

type Db = Kysely<PromotionDB> | Transaction<PromotionDB>;

const SAVEPOINT = "grant_slot";

/**
 * Runs `work` (take a slot, insert the grant) under a savepoint: if a concurrent
 * transaction granted the same (campaign, user) first, the unique index refuses our grant
 * and only this step is undone, slot included, so the counter never counts a grant that
 * does not exist. Returns undefined in that case.
 */
export async function underGrantSavepoint<T>(trx: Transaction<PromotionDB>, work: () => Promise<T>): Promise<T | undefined> {
  await sql.raw(`SAVEPOINT ${SAVEPOINT}`).execute(trx);
  try {
    const out = await work();
    await sql.raw(`RELEASE SAVEPOINT ${SAVEPOINT}`).execute(trx);
    return out;
  } catch (err) {
    if ((err as { code?: string; constraint?: string }).constraint === "grants_campaign_user") {
      await sql.raw(`ROLLBACK TO SAVEPOINT ${SAVEPOINT}`).execute(trx);
      return undefined;
    }
    throw err;
  }
}

export async function insertGrant(trx: Transaction<PromotionDB>, g: { id: string; campaignId: string; userId: string }): Promise<Date> {
  const row = await trx
    .insertInto("grants")
    .values({ id: g.id, campaign_id: g.campaignId, user_id: g.userId, voucher_id: null, issued_at: null, last_issue_error: null })
    .returning("created_at")
    .executeTakeFirstOrThrow();
  return row.created_at;
}

const grantColumns = [
  "g.id",
  "g.campaign_id",
  "g.user_id",
  "g.state",
  "g.voucher_id",
  "g.created_at",
  "g.issued_at",
  "c.name as campaign_name",
  "c.type as campaign_type",
] as const;

type GrantRow = {
  id: string;
  campaign_id: string;
  user_id: string;
  state: GrantState;
  voucher_id: string | null;
  created_at: Date;
  issued_at: Date | null;
  campaign_name: string;
  campaign_type: CampaignType;
};

const grantIn = (r: GrantRow): Grant => ({
  id: r.id,
  campaignId: r.campaign_id,
  campaignName: r.campaign_name,
  campaignType: r.campaign_type,
  userId: r.user_id,
  state: r.state,
  voucherId: r.voucher_id,
  createdAt: r.created_at,
  issuedAt: r.issued_at,
});

const grantsWithCampaign = (db: Db) => db.selectFrom("grants as g").innerJoin("campaigns as c", "c.id", "g.campaign_id");

export async function findGrant(db: Db, id: string): Promise<Grant | undefined> {
  const row = await grantsWithCampaign(db).select(grantColumns).where("g.id", "=", id).executeTakeFirst();
  return row && grantIn(row);
}

export async function findGrantOf(db: Db, campaignId: string, userId: string): Promise<Grant | undefined> {
  const row = await grantsWithCampaign(db).select(grantColumns).where("g.campaign_id", "=", campaignId).where("g.user_id", "=", userId).executeTakeFirst();
  return row && grantIn(row);
}

/** The user's grants in these campaigns: campaign id → grant id. */
export async function grantIdsOf(db: Db, userId: string, campaignIds: string[]): Promise<Map<string, string>> {
  if (!campaignIds.length) return new Map();
  const rows = await db.selectFrom("grants").select(["id", "campaign_id"]).where("user_id", "=", userId).where("campaign_id", "in", campaignIds).execute();
  return new Map(rows.map((r) => [r.campaign_id, r.id]));
}

export interface GrantFilter {
  campaignId?: string;
  userId?: string;
  state?: GrantState;
}

/** Newest first, after `beforeId`. */
export async function listGrants(db: Db, filter: GrantFilter, beforeId: string | undefined, limit: number): Promise<Grant[]> {
  let q = grantsWithCampaign(db).select(grantColumns).orderBy("g.id", "desc").limit(limit);
  if (filter.campaignId) q = q.where("g.campaign_id", "=", filter.campaignId);
  if (filter.userId) q = q.where("g.user_id", "=", filter.userId);
  if (filter.state) q = q.where("g.state", "=", filter.state);
  if (beforeId) q = q.where("g.id", "<", beforeId);
  return (await q.execute()).map(grantIn);
}

/** Records the issued voucher; idempotent (a second issuance of the same grant changes nothing). */
export async function markIssued(db: Db, grantId: string, voucherId: string): Promise<boolean> {
  const res = await db
    .updateTable("grants")
    .set({ state: "issued", voucher_id: voucherId, issued_at: sql<Date>`now()`, last_issue_error: null })
    .where("id", "=", grantId)
    .where("state", "=", "pending_voucher")
    .executeTakeFirst();
  return res.numUpdatedRows > 0n;
}

export async function recordIssueFailure(db: Db, grantId: string, error: string): Promise<void> {
  await db
    .updateTable("grants")
    .set((eb) => ({ issue_failures: eb("issue_failures", "+", 1), last_issue_error: error.slice(0, 500) }))
    .where("id", "=", grantId)
    .where("state", "=", "pending_voucher")
    .execute();
}

export interface PendingGrant {
  id: string;
  campaignId: string;
  userId: string;
  bookId: string;
}

/** Grants still without voucher `olderThanMs` after they were made: what the reconciliation issues. */
export async function pendingGrants(db: Db, olderThanMs: number, limit: number): Promise<PendingGrant[]> {
  const rows = await db
    .selectFrom("grants as g")
    .innerJoin("campaigns as c", "c.id", "g.campaign_id")
    .select(["g.id", "g.campaign_id", "g.user_id", "c.book_id"])
    .where("g.state", "=", "pending_voucher")
    .where("g.created_at", "<", sql<Date>`now() - make_interval(secs => ${olderThanMs / 1000})`)
    .orderBy("g.created_at")
    .limit(limit)
    .execute();
  return rows.map((r) => ({ id: r.id, campaignId: r.campaign_id, userId: r.user_id, bookId: r.book_id }));
}
