// Sessions (refresh-token families) and their refresh tokens.
//
// Every refresh of a family takes the family's row lock first (`SELECT … FOR UPDATE` on
// the session), so refreshes, logouts and reuse detection of one family run one at a time
// and each sees what the previous one committed. Of N concurrent refreshes of one token,
// the first marks it rotated; the others then find it rotated, which is exactly what a
// replayed (stolen) token looks like, so the family is revoked. Families of different
// users never wait for each other.
import { sql, type Kysely, type Transaction } from "kysely";
import { prepared } from "../../kit/db.js";
import type { OutboxRow } from "../../kit/events/index.js";
import { newId } from "../../kit/ids.js";
import type { AuthDB } from "./schema.js";
import { USER_COLUMNS_SQL, type UserRow } from "./users.js";

type Db = Kysely<AuthDB> | Transaction<AuthDB>;

export interface SessionLifetimes {
  idleTtlMs: number;
  absoluteTtlMs: number;
}

export interface NewSession {
  sessionId: string;
  /** When the new refresh token stops working if unused (idle expiry, capped by the absolute one). */
  refreshExpiresAt: Date;
}

/** A new session's id and expiries. */
function sessionTimes(lifetimes: SessionLifetimes, now: Date) {
  const expiresAt = new Date(now.getTime() + lifetimes.absoluteTtlMs);
  const idleExpiresAt = new Date(Math.min(now.getTime() + lifetimes.idleTtlMs, expiresAt.getTime()));
  return { sessionId: newId(), expiresAt, idleExpiresAt };
}

export async function createSession(
  trx: Transaction<AuthDB>,
  userId: string,
  tokenHash: Uint8Array,
  lifetimes: SessionLifetimes,
  now = new Date(),
): Promise<NewSession> {
  const { sessionId, expiresAt, idleExpiresAt } = sessionTimes(lifetimes, now);
  await trx
    .insertInto("sessions")
    .values({ id: sessionId, user_id: userId, last_used_at: now, idle_expires_at: idleExpiresAt, expires_at: expiresAt })
    .execute();
  await trx.insertInto("refresh_tokens").values({ token_hash: tokenHash, session_id: sessionId }).execute();
  return { sessionId, refreshExpiresAt: idleExpiresAt };
}

export interface LoginRecord {
  user: UserRow;
  /** True for exactly one login per user, however many race. */
  firstLogin: boolean;
  session: NewSession;
}

/**
 * Records a successful login, starts its session and writes its `user_logged_in` event to
 * the outbox, in one statement that needs no transaction around it (a login is on the hot
 * path: every round trip to Postgres costs about as much CPU as a tenth of the password
 * hash).
 *
 * The first login is a conditional update (`first_login_at IS NULL`). Of concurrent first
 * logins one matches; the others wait for its row lock, re-check the condition against the
 * committed row (READ COMMITTED's re-evaluation), no longer match, and take the second
 * update, which runs only when the first matched nothing. So exactly one caller sees
 * `firstLogin: true`.
 */
export async function recordLoginAndStartSession(
  db: Db,
  userId: string,
  tokenHash: Uint8Array,
  lifetimes: SessionLifetimes,
  /** The login event, for a first login and for a later one: the statement writes the one that applies. */
  events: { first: OutboxRow; later: OutboxRow },
  now = new Date(),
): Promise<LoginRecord> {
  const { sessionId, expiresAt, idleExpiresAt } = sessionTimes(lifetimes, now);
  // Prepared: planning these six parts costs Postgres more than running them. (Its `*` is
  // over the CTEs' named columns, so a column added to users changes nothing.)
  const { rows } = await prepared(sql<UserRow & { firstLogin: boolean }>`
    WITH first AS (
      UPDATE users SET first_login_at = ${now}, last_login_at = ${now}
      WHERE id = ${userId} AND first_login_at IS NULL
      RETURNING ${USER_COLUMNS_SQL}, true AS "firstLogin"
    ), later AS (
      UPDATE users SET last_login_at = ${now}
      WHERE id = ${userId} AND NOT EXISTS (SELECT 1 FROM first)
      RETURNING ${USER_COLUMNS_SQL}, false AS "firstLogin"
    ), first_event AS (
      INSERT INTO outbox (id, subject, payload, headers)
      SELECT ${events.first.id}, ${events.first.subject}, ${events.first.payload}, ${events.first.headers}::jsonb WHERE EXISTS (SELECT 1 FROM first)
    ), later_event AS (
      INSERT INTO outbox (id, subject, payload, headers)
      SELECT ${events.later.id}, ${events.later.subject}, ${events.later.payload}, ${events.later.headers}::jsonb WHERE EXISTS (SELECT 1 FROM later)
    ), session AS (
      INSERT INTO sessions (id, user_id, last_used_at, idle_expires_at, expires_at)
      VALUES (${sessionId}, ${userId}, ${now}, ${idleExpiresAt}, ${expiresAt})
      RETURNING id
    ), token AS (
      INSERT INTO refresh_tokens (token_hash, session_id) SELECT ${tokenHash}, id FROM session
    )
    SELECT * FROM first UNION ALL SELECT * FROM later`).execute(db);
  if (rows.length !== 1) throw new Error(`login of user ${userId}: expected one user row, got ${rows.length}`);
  const { firstLogin, ...user } = rows[0];
  return { user, firstLogin, session: { sessionId, refreshExpiresAt: idleExpiresAt } };
}

export type RotateOutcome =
  | { kind: "rotated"; sessionId: string; userId: string; refreshExpiresAt: Date }
  /** No such token. */
  | { kind: "unknown" }
  /** The token had been exchanged before: the family is now revoked (if it was not already). */
  | { kind: "reused"; sessionId: string; userId: string; revokedNow: boolean }
  /** The family was ended (logout, password change, earlier reuse). */
  | { kind: "revoked"; sessionId: string }
  /** The family passed its idle or absolute expiry; it is now marked revoked. */
  | { kind: "expired"; sessionId: string };

/**
 * Exchanges a refresh token for a new one of the same family, or says why not. Run it in
 * a transaction: the outcome (including a revocation for reuse) commits with it.
 */
export async function rotateRefreshToken(
  trx: Transaction<AuthDB>,
  tokenHash: Uint8Array,
  newTokenHash: Uint8Array,
  lifetimes: SessionLifetimes,
  now = new Date(),
): Promise<RotateOutcome> {
  const token = await trx.selectFrom("refresh_tokens").select("session_id").where("token_hash", "=", tokenHash).executeTakeFirst();
  if (!token) return { kind: "unknown" };
  const session = await trx
    .selectFrom("sessions")
    .select(["id", "user_id", "revoked_at", "idle_expires_at", "expires_at"])
    .where("id", "=", token.session_id)
    .forUpdate()
    .executeTakeFirstOrThrow();
  // With the family locked, a fresh read sees every earlier rotation of it.
  const rotated = await trx
    .updateTable("refresh_tokens")
    .set({ rotated_at: now })
    .where("token_hash", "=", tokenHash)
    .where("rotated_at", "is", null)
    .returning("session_id")
    .executeTakeFirst();
  if (!rotated) {
    const revokedNow = await revokeSession(trx, session.id, "refresh_token_reused");
    return { kind: "reused", sessionId: session.id, userId: session.user_id, revokedNow };
  }
  if (session.revoked_at) return { kind: "revoked", sessionId: session.id };
  if (session.idle_expires_at <= now || session.expires_at <= now) {
    await revokeSession(trx, session.id, "expired");
    return { kind: "expired", sessionId: session.id };
  }
  const refreshExpiresAt = new Date(Math.min(now.getTime() + lifetimes.idleTtlMs, session.expires_at.getTime()));
  await trx.insertInto("refresh_tokens").values({ token_hash: newTokenHash, session_id: session.id }).execute();
  await trx.updateTable("sessions").set({ last_used_at: now, idle_expires_at: refreshExpiresAt }).where("id", "=", session.id).execute();
  return { kind: "rotated", sessionId: session.id, userId: session.user_id, refreshExpiresAt };
}

/** The family a token (current or already rotated) belongs to. */
export async function sessionOfToken(db: Db, tokenHash: Uint8Array): Promise<{ sessionId: string; userId: string } | undefined> {
  return db
    .selectFrom("refresh_tokens")
    .innerJoin("sessions", "sessions.id", "refresh_tokens.session_id")
    .select(["sessions.id as sessionId", "sessions.user_id as userId"])
    .where("refresh_tokens.token_hash", "=", tokenHash)
    .executeTakeFirst();
}

/** Ends one family; true if it was live until now. */
export async function revokeSession(db: Db, sessionId: string, reason: string): Promise<boolean> {
  const res = await db
    .updateTable("sessions")
    .set({ revoked_at: sql`now()`, revoke_reason: reason })
    .where("id", "=", sessionId)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  return res.numUpdatedRows > 0n;
}

/** Ends every live family of a user; returns how many. */
export async function revokeUserSessions(db: Db, userId: string, reason: string): Promise<number> {
  const res = await db
    .updateTable("sessions")
    .set({ revoked_at: sql`now()`, revoke_reason: reason })
    .where("user_id", "=", userId)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  return Number(res.numUpdatedRows);
}

/** Deletes families (and their tokens) that ended more than `keepMs` ago. */
export async function pruneSessions(db: Db, keepMs: number): Promise<number> {
  const cutoff = new Date(Date.now() - keepMs);
  const res = await db
    .deleteFrom("sessions")
    .where((eb) => eb.or([eb("expires_at", "<", cutoff), eb("revoked_at", "<", cutoff)]))
    .executeTakeFirst();
  return Number(res.numDeletedRows);
}
