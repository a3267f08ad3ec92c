// Codes bought from the outside provider, stored once per code request.
import { sql, type Kysely, type Transaction } from "kysely";
import type { VoucherDB } from "./schema.js";

type Db = Kysely<VoucherDB> | Transaction<VoucherDB>;

export interface PurchasedCode {
  id: string;
  codeRequestId: string;
  userId: string;
  phoneNumber: string;
  code: string;
  /** DeliveryChannel / ProviderCodeStatus numbers, stored as the contract numbers them. */
  channel: number;
  providerStatus: number;
  receiveTime: Date;
  createdAt: Date;
}

const toPurchased = (r: Record<string, any>): PurchasedCode => ({
  id: r.id,
  codeRequestId: r.code_request_id,
  userId: r.user_id,
  phoneNumber: r.phone_number,
  code: r.code,
  channel: r.channel,
  providerStatus: r.provider_status,
  receiveTime: new Date(r.receive_time),
  createdAt: new Date(r.created_at),
});

/**
 * Stores the code of a code request unless that request already has one; returns the
 * stored row (the earlier one on a repeat) and whether this call inserted it.
 */
export async function storePurchased(db: Db, p: Omit<PurchasedCode, "createdAt">): Promise<{ stored: PurchasedCode; inserted: boolean }> {
  const row = await db
    .insertInto("purchased_codes")
    .values({
      id: p.id,
      code_request_id: p.codeRequestId,
      user_id: p.userId,
      phone_number: p.phoneNumber,
      code: p.code,
      channel: p.channel,
      provider_status: p.providerStatus,
      receive_time: p.receiveTime,
    })
    .onConflict((oc) => oc.column("code_request_id").doNothing())
    .returningAll()
    .executeTakeFirst();
  if (row) return { stored: toPurchased(row), inserted: true };
  const existing = await db.selectFrom("purchased_codes").selectAll().where("code_request_id", "=", p.codeRequestId).executeTakeFirstOrThrow();
  return { stored: toPurchased(existing), inserted: false };
}

export async function findPurchased(db: Db, id: string): Promise<PurchasedCode | undefined> {
  const row = await db.selectFrom("purchased_codes").selectAll().where("id", "=", id).executeTakeFirst();
  return row && toPurchased(row);
}

export async function listPurchasedByPhone(db: Db, phone: string, beforeId: string | undefined, limit: number): Promise<PurchasedCode[]> {
  let q = db.selectFrom("purchased_codes").selectAll().where("phone_number", "=", phone).orderBy("id", "desc").limit(limit);
  if (beforeId) q = q.where("id", "<", beforeId);
  return (await q.execute()).map(toPurchased);
}

export async function countPurchased(db: Db, codeRequestId: string): Promise<number> {
  const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM purchased_codes WHERE code_request_id = ${codeRequestId}`.execute(db);
  return Number(rows[0].n);
}
