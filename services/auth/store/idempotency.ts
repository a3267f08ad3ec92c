// Request ids for retryable mutations (AIP-155). The id's row is inserted first, in the
// same transaction as the effect: a concurrent call with the same id waits on that insert
// until the first commits (then replays its result) or rolls back (then runs itself).
import { sql, type Kysely, type Transaction } from "kysely";
import type { AuthDB } from "./schema.js";

export type Claim<R> = { kind: "new" } | { kind: "replay"; result: R } | { kind: "mismatch" };

export async function claimRequestId<R>(trx: Transaction<AuthDB>, operation: string, requestId: string, fingerprint: string): Promise<Claim<R>> {
  const inserted = await trx
    .insertInto("idempotency_keys")
    .values({ operation, request_id: requestId, fingerprint, result: null })
    .onConflict((oc) => oc.columns(["operation", "request_id"]).doNothing())
    .returning("request_id")
    .executeTakeFirst();
  if (inserted) return { kind: "new" };
  const existing = await trx
    .selectFrom("idempotency_keys")
    .select(["fingerprint", "result"])
    .where("operation", "=", operation)
    .where("request_id", "=", requestId)
    .executeTakeFirstOrThrow();
  if (existing.fingerprint !== fingerprint || existing.result === null) return { kind: "mismatch" };
  return { kind: "replay", result: existing.result as R };
}

export async function completeRequestId(trx: Transaction<AuthDB>, operation: string, requestId: string, result: Record<string, unknown>): Promise<void> {
  await trx
    .updateTable("idempotency_keys")
    .set({ result: JSON.stringify(result) })
    .where("operation", "=", operation)
    .where("request_id", "=", requestId)
    .execute();
}

export async function pruneRequestIds(db: Kysely<AuthDB>, keepMs: number): Promise<number> {
  const res = await db
    .deleteFrom("idempotency_keys")
    .where("created_at", "<", sql<Date>`now() - make_interval(secs => ${keepMs / 1000})`)
    .executeTakeFirst();
  return Number(res.numDeletedRows);
}
