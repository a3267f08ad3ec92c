// Top-up order rows. Every state change is one conditional UPDATE … WHERE state = …, so a
// confirmation racing the deadline sweep, a cancel, or another confirmation has exactly
// one winner; the loser reads the row to say why.
import { sql, type Kysely, type Selectable, type Transaction } from "kysely";
import type { Money, TopUp, TopUpState } from "../domain/model.js";
import type { PromotionDB, TopUpTable } from "./schema.js";

type Db = Kysely<PromotionDB> | Transaction<PromotionDB>;

export function topUpIn(r: Selectable<TopUpTable>): TopUp {
  const m = (minor: string): Money => ({ minor: BigInt(minor), currency: r.currency });
  return {
    id: r.id,
    userId: r.user_id,
    phoneNumber: r.phone_number,
    amount: m(r.amount_minor),
    voucherCode: r.voucher_code,
    voucherId: r.voucher_id,
    reservationToken: r.reservation_token,
    discount: r.discount_minor === null ? null : m(r.discount_minor),
    pay: m(r.pay_minor),
    reference: r.reference,
    deadlineAt: r.deadline_at,
    state: r.state,
    confirmRequestId: r.confirm_request_id,
    redemptionId: r.redemption_id,
    operatorReference: r.operator_reference,
    failureMessage: r.failure_message,
    releasePending: r.release_pending,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    confirmedAt: r.confirmed_at,
    finishedAt: r.finished_at,
  };
}

export interface NewTopUp {
  id: string;
  userId: string;
  requestId: string;
  fingerprint: string;
  phoneNumber: string;
  amount: Money;
  voucherCode: string | null;
  voucherId: string | null;
  reservationToken: string | null;
  discount: Money | null;
  pay: Money;
  reference: string;
  deadlineAt: Date;
  state: TopUpState;
}

export type InsertOutcome = { kind: "inserted"; topUp: TopUp } | { kind: "request_taken" } | { kind: "reference_taken" };

export async function insertTopUp(db: Db, t: NewTopUp): Promise<InsertOutcome> {
  const row = await db
    .insertInto("top_ups")
    .values({
      id: t.id,
      user_id: t.userId,
      request_id: t.requestId,
      request_fingerprint: t.fingerprint,
      phone_number: t.phoneNumber,
      amount_minor: t.amount.minor,
      currency: t.amount.currency,
      voucher_code: t.voucherCode,
      voucher_id: t.voucherId,
      reservation_token: t.reservationToken,
      discount_minor: t.discount?.minor ?? null,
      pay_minor: t.pay.minor,
      reference: t.reference,
      deadline_at: t.deadlineAt,
      state: t.state,
      confirm_request_id: null,
      confirm_fingerprint: null,
      redemption_id: null,
      operator_reference: null,
      failure_message: null,
      confirmed_at: null,
      finished_at: null,
    })
    .onConflict((oc) => oc.constraint("top_ups_user_request").doNothing())
    .returningAll()
    .executeTakeFirst()
    .catch((err: { constraint?: string }) => {
      if (err.constraint === "top_ups_reference") return "reference_taken" as const;
      throw err;
    });
  if (row === "reference_taken") return { kind: "reference_taken" };
  return row ? { kind: "inserted", topUp: topUpIn(row) } : { kind: "request_taken" };
}

export async function findTopUp(db: Db, id: string): Promise<TopUp | undefined> {
  const row = await db.selectFrom("top_ups").selectAll().where("id", "=", id).executeTakeFirst();
  return row && topUpIn(row);
}

export async function findByRequest(db: Db, userId: string, requestId: string): Promise<(TopUp & { fingerprint: string }) | undefined> {
  const row = await db.selectFrom("top_ups").selectAll().where("user_id", "=", userId).where("request_id", "=", requestId).executeTakeFirst();
  return row && { ...topUpIn(row), fingerprint: row.request_fingerprint };
}

export async function findByReference(db: Db, reference: string): Promise<TopUp | undefined> {
  const row = await db.selectFrom("top_ups").selectAll().where("reference", "=", reference).executeTakeFirst();
  return row && topUpIn(row);
}

export async function findByConfirmation(db: Db, confirmRequestId: string): Promise<(TopUp & { confirmFingerprint: string | null }) | undefined> {
  const row = await db.selectFrom("top_ups").selectAll().where("confirm_request_id", "=", confirmRequestId).executeTakeFirst();
  return row && { ...topUpIn(row), confirmFingerprint: row.confirm_fingerprint };
}

export interface TopUpFilter {
  userId?: string;
  state?: TopUpState;
  phoneNumber?: string;
  reference?: string;
}

export async function listTopUps(db: Db, filter: TopUpFilter, beforeId: string | undefined, limit: number): Promise<TopUp[]> {
  let q = db.selectFrom("top_ups").selectAll().orderBy("id", "desc").limit(limit);
  if (filter.userId) q = q.where("user_id", "=", filter.userId);
  if (filter.state) q = q.where("state", "=", filter.state);
  if (filter.phoneNumber) q = q.where("phone_number", "=", filter.phoneNumber);
  if (filter.reference) q = q.where("reference", "=", filter.reference);
  if (beforeId) q = q.where("id", "<", beforeId);
  return (await q.execute()).map(topUpIn);
}

/**
 * AWAITING_TRANSFER → PROCESSING for this confirmation, only before the deadline: the
 * single winner among concurrent confirmations, a cancel and the deadline sweep.
 */
export async function markPaid(db: Db, id: string, confirmRequestId: string, fingerprint: string): Promise<TopUp | undefined> {
  const row = await db
    .updateTable("top_ups")
    .set({ state: "processing", confirm_request_id: confirmRequestId, confirm_fingerprint: fingerprint, confirmed_at: sql<Date>`now()`, updated_at: sql<Date>`now()` })
    .where("id", "=", id)
    .where("state", "=", "awaiting_transfer")
    .where("deadline_at", ">", sql<Date>`now()`)
    .returningAll()
    .executeTakeFirst();
  return row && topUpIn(row);
}

export async function recordRedemption(db: Db, id: string, redemptionId: string): Promise<void> {
  await db.updateTable("top_ups").set({ redemption_id: redemptionId, updated_at: sql<Date>`now()` }).where("id", "=", id).where("state", "=", "processing").execute();
}

/**
 * PROCESSING → COMPLETED | FAILED, once. A failed order that redeemed nothing still holds
 * its reservation: release_pending until it is released after commit.
 */
export async function finishProcessing(
  db: Db,
  id: string,
  to: "completed" | "failed",
  fields: { operatorReference?: string; failureMessage?: string },
): Promise<TopUp | undefined> {
  const row = await db
    .updateTable("top_ups")
    .set({
      state: to,
      operator_reference: fields.operatorReference ?? null,
      failure_message: fields.failureMessage ?? null,
      finished_at: sql<Date>`now()`,
      updated_at: sql<Date>`now()`,
      ...(to === "failed" && { release_pending: sql<boolean>`reservation_token IS NOT NULL AND redemption_id IS NULL` }),
    })
    .where("id", "=", id)
    .where("state", "=", "processing")
    .returningAll()
    .executeTakeFirst();
  return row && topUpIn(row);
}

/** AWAITING_TRANSFER → CANCELLED (the reservation is released after commit; release_pending until then). */
export async function cancel(db: Db, id: string): Promise<TopUp | undefined> {
  const row = await db
    .updateTable("top_ups")
    .set({ state: "cancelled", finished_at: sql<Date>`now()`, updated_at: sql<Date>`now()`, release_pending: sql<boolean>`reservation_token IS NOT NULL` })
    .where("id", "=", id)
    .where("state", "=", "awaiting_transfer")
    .where("deadline_at", ">", sql<Date>`now()`)
    .returningAll()
    .executeTakeFirst();
  return row && topUpIn(row);
}

/** Expires orders past their deadline (one statement: every replica may run it; each order expires once). */
export async function expireOverdue(db: Db, ids?: string[]): Promise<TopUp[]> {
  let q = db
    .updateTable("top_ups")
    .set({ state: "expired", finished_at: sql<Date>`now()`, updated_at: sql<Date>`now()`, release_pending: sql<boolean>`reservation_token IS NOT NULL` })
    .where("state", "=", "awaiting_transfer")
    .where("deadline_at", "<=", sql<Date>`now()`);
  if (ids) q = q.where("id", "in", ids);
  return (await q.returningAll().execute()).map(topUpIn);
}

export async function markReleased(db: Db, id: string): Promise<void> {
  await db.updateTable("top_ups").set({ release_pending: false }).where("id", "=", id).execute();
}

/** Orders a crash may have left mid-saga: paid but not finished, or a reservation still to release. */
export async function unfinished(db: Db, olderThanMs: number, limit: number): Promise<TopUp[]> {
  const rows = await db
    .selectFrom("top_ups")
    .selectAll()
    .where((eb) => eb.or([eb("state", "=", "processing"), eb("release_pending", "=", true)]))
    .where("updated_at", "<", sql<Date>`now() - make_interval(secs => ${olderThanMs / 1000})`)
    .orderBy("updated_at")
    .limit(limit)
    .execute();
  return rows.map(topUpIn);
}
