// Request ids (AIP-155). The id's row is inserted first, in the transaction of the effect:
// a concurrent call with the same id blocks on that insert until the first commits (then
// replays the stored response) or rolls back (then runs itself). The response is stored in
// the same transaction as the effect, so "applied" and "answer recorded" cannot diverge.
import { sql, type Kysely, type Transaction } from "kysely";
import type { VoucherDB } from "./schema.js";

export interface RequestKey {
  scope: string;
  operation: string;
  requestId: string;
  fingerprint: Buffer;
}

export type RequestClaim = { kind: "new" } | { kind: "replay"; response: Uint8Array } | { kind: "mismatch" };

export async function claimRequest(trx: Transaction<VoucherDB>, key: RequestKey): Promise<RequestClaim> {
  const inserted = await trx
    .insertInto("requests")
    .values({ scope: key.scope, operation: key.operation, request_id: key.requestId, fingerprint: key.fingerprint, response: null })
    .onConflict((oc) => oc.columns(["scope", "operation", "request_id"]).doNothing())
    .returning("request_id")
    .executeTakeFirst();
  if (inserted) return { kind: "new" };
  const existing = await trx
    .selectFrom("requests")
    .select(["fingerprint", "response"])
    .where("scope", "=", key.scope)
    .where("operation", "=", key.operation)
    .where("request_id", "=", key.requestId)
    .executeTakeFirstOrThrow();
  if (!existing.fingerprint.equals(key.fingerprint) || existing.response === null) return { kind: "mismatch" };
  return { kind: "replay", response: new Uint8Array(existing.response) };
}

export async function recordResponse(trx: Transaction<VoucherDB>, key: RequestKey, response: Uint8Array): Promise<void> {
  await trx
    .updateTable("requests")
    .set({ response: Buffer.from(response) })
    .where("scope", "=", key.scope)
    .where("operation", "=", key.operation)
    .where("request_id", "=", key.requestId)
    .execute();
}

export async function pruneRequests(db: Kysely<VoucherDB>, olderThanMs: number): Promise<number> {
  const res = await db
    .deleteFrom("requests")
    .where("created_at", "<", sql<Date>`now() - ${olderThanMs}::bigint * interval '1 millisecond'`)
    .executeTakeFirst();
  return Number(res.numDeletedRows);
}
