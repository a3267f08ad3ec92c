// The dev SMS sink's table: messages recorded instead of sent, for operators and tests.
import type { Kysely, Transaction } from "kysely";
import { newId } from "../../kit/ids.js";
import type { ProviderDB } from "./schema.js";

export interface SentSmsRow {
  id: string;
  phoneNumber: string;
  body: string;
  codeRequestId: string;
  purpose: string;
  sentAt: Date;
}

/** Records a message; a second one of the same purpose for the same request is ignored. */
export async function recordSms(trx: Transaction<ProviderDB>, sms: Omit<SentSmsRow, "id" | "sentAt">): Promise<void> {
  await trx
    .insertInto("sent_sms")
    .values({ id: newId(), phone_number: sms.phoneNumber, body: sms.body, code_request_id: sms.codeRequestId, purpose: sms.purpose })
    .onConflict((oc) => oc.columns(["code_request_id", "purpose"]).doNothing())
    .execute();
}

export async function listSentSms(
  db: Kysely<ProviderDB>,
  filter: { phoneNumber?: string; codeRequestId?: string },
  page: { beforeId?: string; limit: number },
): Promise<SentSmsRow[]> {
  let q = db.selectFrom("sent_sms").selectAll();
  if (filter.phoneNumber) q = q.where("phone_number", "=", filter.phoneNumber);
  if (filter.codeRequestId) q = q.where("code_request_id", "=", filter.codeRequestId);
  if (page.beforeId) q = q.where("id", "<", page.beforeId);
  const rows = await q.orderBy("id", "desc").limit(page.limit).execute();
  return rows.map((r) => ({ id: r.id, phoneNumber: r.phone_number, body: r.body, codeRequestId: r.code_request_id, purpose: r.purpose, sentAt: r.sent_at }));
}
