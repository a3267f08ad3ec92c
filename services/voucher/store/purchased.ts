// Codes bought from the outside provider, stored once per code request.
import { sql, type Kysely, type Transaction } from "kysely";
import { prepared } from "../../kit/db.js";
import type { OutboxRow } from "../../kit/events/index.js";
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
 * stored row (the earlier one on a repeat). `announce`
 * (the row's `purchased_code_stored` event) is written to the outbox in the same statement,
 * only when the row is inserted.
 */
export async function storePurchased(db: Db, p: PurchasedCode, announce: OutboxRow): Promise<PurchasedCode> {
  // Prepared: every purchased code runs it; so its columns are named (no `*` in a cached plan).
  const { rows } = await prepared(sql<Record<string, any>>`
    WITH stored AS (
      INSERT INTO purchased_codes (id, code_request_id, user_id, phone_number, code, channel, provider_status, receive_time, created_at)
      VALUES (${p.id}, ${p.codeRequestId}, ${p.userId}, ${p.phoneNumber}, ${p.code}, ${p.channel}, ${p.providerStatus}, ${p.receiveTime}, ${p.createdAt})
      ON CONFLICT (code_request_id) DO NOTHING
      RETURNING id, code_request_id, user_id, phone_number, code, channel, provider_status, receive_time, created_at
    ), announced AS (
      INSERT INTO outbox (id, subject, payload, headers)
      SELECT ${announce.id}, ${announce.subject}, ${announce.payload}, ${announce.headers}::jsonb FROM stored
    )
    SELECT * FROM stored`).execute(db);
  if (rows[0]) return toPurchased(rows[0]);
  // A conflict: the request's code is stored already (read in a statement of its own, since a
  // row committed after this statement began is not in its snapshot).
  const existing = await db.selectFrom("purchased_codes").selectAll().where("code_request_id", "=", p.codeRequestId).executeTakeFirstOrThrow();
  return toPurchased(existing);
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
