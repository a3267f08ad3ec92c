// Transactions for the voucher store: retried when Postgres aborts them for a deadlock or
// a serialization failure (nothing was applied), and Postgres being unreachable reported
// as UNAVAILABLE instead of a bare INTERNAL, so clients retry with the same request_id.
import type { Kysely, Transaction } from "kysely";
import { Code, VouchError } from "../../kit/errors.js";
import { runOnce as runOnceIn, type Idempotency, type OnceOutcome } from "../../kit/idempotency.js";

const RETRYABLE = new Set(["40001", "40P01"]);
const UNREACHABLE_CODES = new Set(["57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006", "53300"]);
const UNREACHABLE_ERRNO = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ENOTFOUND"]);

export const pgCode = (err: unknown): string | undefined => (err as { code?: string } | null)?.code;

export function isUniqueViolation(err: unknown, constraint?: string): boolean {
  return pgCode(err) === "23505" && (!constraint || (err as { constraint?: string }).constraint === constraint);
}

/** A VouchError for Postgres trouble the caller can retry through, or undefined. */
export function databaseTrouble(err: unknown): VouchError | undefined {
  const code = pgCode(err);
  if (code && RETRYABLE.has(code)) {
    return new VouchError(Code.Aborted, "TRANSACTION_ABORTED", "the transaction lost a conflict; nothing was applied, retry with the same request_id", { cause: err });
  }
  const message = err instanceof Error ? err.message : "";
  if ((code && (UNREACHABLE_CODES.has(code) || UNREACHABLE_ERRNO.has(code))) || /Connection terminated|connection timeout|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(message)) {
    return new VouchError(Code.Unavailable, "TEMPORARILY_UNAVAILABLE", "the database is briefly unreachable or saturated; retry with the same request_id", { retryAfterMs: 1_000, cause: err });
  }
  return undefined;
}

export async function transaction<DB, T>(db: Kysely<DB>, work: (trx: Transaction<DB>) => Promise<T>, attempts = 4): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.transaction().execute(work);
    } catch (err) {
      // A row that changed between a refused conditional update and the read explaining it
      // (see vouchers.ts `explain`) is retried like a deadlock: nothing was applied.
      const conflicted = err instanceof VouchError && err.reason === "TRANSACTION_ABORTED";
      if (attempt < attempts && (conflicted || RETRYABLE.has(pgCode(err) ?? ""))) {
        await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
        continue;
      }
      throw databaseTrouble(err) ?? err;
    }
  }
}

/** The kit's request-id mechanism (AIP-155) in a transaction retried as above. */
export function runOnce<DB, R>(db: Kysely<DB>, idem: Idempotency<R> | undefined, work: (trx: Transaction<DB>) => Promise<R>): Promise<OnceOutcome<R>> {
  return runOnceIn(db, idem, work, (run) => transaction(db, run));
}
