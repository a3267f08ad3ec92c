// Code requests in Postgres. Each state change is one of the domain's MOVES applied as a
// conditional UPDATE … WHERE state IN (from) RETURNING: the database decides which of two
// racing moves wins, and the loser gets `undefined` and must do nothing (no event, no SMS).
// Times are clock_timestamp(), not now(): the worker's transaction starts before its
// provider call, and "received at" is when the answer came, not when the call began (the
// moves that receive a code take that instant from the caller, which also puts it in the event).
import { sql, type Kysely, type RawBuilder, type Selectable, type Transaction } from "kysely";
import { insertOnce, type RequestClaim, type RequestKey } from "../../kit/idempotency.js";
import type { OutboxRow } from "../../kit/events/index.js";
import { lastInTransaction, prepared } from "../../kit/db.js";
import { newId } from "../../kit/ids.js";
import { MOVES, STATUS_MESSAGES, stateForStatus, type Channel, type ProviderStatus, type RequestState } from "../domain/states.js";
import type { CodeRequestsTable, ProviderDB } from "./schema.js";

type Db = Kysely<ProviderDB> | Transaction<ProviderDB>;

export interface CodeRequestRow {
  id: string;
  userId: string;
  phoneNumber: string;
  channel: Channel;
  state: RequestState;
  statusMessage: string;
  code: string | null;
  providerStatus: ProviderStatus | null;
  codeChallenge: string | null;
  callbackFingerprint: string | null;
  retryOfId: string | null;
  attemptCount: number;
  lastError: string | null;
  failureMessage: string | null;
  createdAt: Date;
  updatedAt: Date;
  acknowledgedAt: Date | null;
  receivedAt: Date | null;
  deliveredAt: Date | null;
  expireAt: Date;
}

function toRow(r: Selectable<CodeRequestsTable>): CodeRequestRow {
  return {
    id: r.id,
    userId: r.user_id,
    phoneNumber: r.phone_number,
    channel: r.channel,
    state: r.state,
    statusMessage: r.status_message,
    code: r.code,
    providerStatus: r.provider_status,
    codeChallenge: r.code_challenge,
    callbackFingerprint: r.callback_fingerprint,
    retryOfId: r.retry_of_id,
    attemptCount: r.attempt_count,
    lastError: r.last_error,
    failureMessage: r.failure_message,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    acknowledgedAt: r.acknowledged_at,
    receivedAt: r.received_at,
    deliveredAt: r.delivered_at,
    expireAt: r.expire_at,
  };
}

const one = (r: Selectable<CodeRequestsTable> | undefined) => (r ? toRow(r) : undefined);

/**
 * What the hot statements return, by name: they are `prepared`, and a cached plan of a `*`
 * would fail once a migration adds a column under a running replica.
 */
const COLUMNS = sql.raw(
  "id, user_id, phone_number, channel, state, status_message, code, provider_status, code_challenge, callback_fingerprint, retry_of_id, " +
    "attempt_count, last_error, failure_message, created_at, updated_at, acknowledged_at, received_at, delivered_at, expire_at",
);

export interface NewCodeRequest {
  userId: string;
  phoneNumber: string;
  channel: Channel;
  retryOfId?: string;
  /** How long the request may take before it expires. */
  deadlineMs: number;
}

/**
 * A new pending request as it will be stored: every column is chosen here (none left to a
 * default), so its response can be made before it is written.
 */
export function newCodeRequest(input: NewCodeRequest): CodeRequestRow {
  const createdAt = new Date();
  return {
    id: newId(),
    userId: input.userId,
    phoneNumber: input.phoneNumber,
    channel: input.channel,
    state: "pending",
    statusMessage: STATUS_MESSAGES.pending,
    code: null,
    providerStatus: null,
    codeChallenge: null,
    callbackFingerprint: null,
    retryOfId: input.retryOfId ?? null,
    attemptCount: 0,
    lastError: null,
    failureMessage: null,
    createdAt,
    updatedAt: createdAt,
    acknowledgedAt: null,
    receivedAt: null,
    deliveredAt: null,
    expireAt: new Date(createdAt.getTime() + input.deadlineMs),
  };
}

/**
 * The CTEs `inserted` and `announced`, which write `row` (as `newCodeRequest` made it) and its
 * event `announce`; with `source`, once per row of it (one row: written, none: nothing).
 */
function insertRequestCtes(row: CodeRequestRow, announce: OutboxRow, source?: RawBuilder<unknown>) {
  const values = sql`${row.id}, ${row.userId}, ${row.phoneNumber}, ${row.channel}, ${row.state}, ${row.statusMessage}, ${row.retryOfId},
              ${row.attemptCount}, ${row.createdAt}::timestamptz, ${row.updatedAt}::timestamptz, ${row.expireAt}::timestamptz`;
  return sql`inserted AS (
      INSERT INTO code_requests (id, user_id, phone_number, channel, state, status_message, retry_of_id, attempt_count, created_at, updated_at, expire_at)
      ${source ? sql`SELECT ${values} FROM ${source}` : sql`VALUES (${values})`}
      RETURNING id
    ), announced AS (
      INSERT INTO outbox (id, subject, payload, headers)
      SELECT ${announce.id}, ${announce.subject}, ${announce.payload}, ${announce.headers}::jsonb FROM inserted
    )`;
}

/** Writes `row` (as `newCodeRequest` made it) and, in the same statement, its event `announce`. */
export async function insertCodeRequest(trx: Transaction<ProviderDB>, row: CodeRequestRow, announce: OutboxRow): Promise<void> {
  await prepared(sql`WITH ${insertRequestCtes(row, announce)} SELECT id FROM inserted`).execute(trx);
}

/**
 * RequestCode's write, in one autocommitted statement (`insertOnce`): claims the request id
 * `key`, writes `row` and its event `announce`, and stores `response` for replays. A replay,
 * or the id used with another request (REQUEST_ID_REUSED), writes nothing.
 */
export function insertCodeRequestOnce(db: Kysely<ProviderDB>, key: RequestKey, row: CodeRequestRow, announce: OutboxRow, response: Uint8Array): Promise<RequestClaim> {
  return insertOnce(db, key, response, (claim) => insertRequestCtes(row, announce, claim));
}

export async function getCodeRequest(db: Db, id: string): Promise<CodeRequestRow | undefined> {
  return one(await db.selectFrom("code_requests").selectAll().where("id", "=", id).executeTakeFirst());
}

export interface CodeRequestFilter {
  state?: RequestState;
  phoneNumber?: string;
  userId?: string;
}

/** Newest first, after the `beforeId` cursor (ids are time-ordered). */
export async function listCodeRequests(db: Db, filter: CodeRequestFilter, page: { beforeId?: string; limit: number }): Promise<CodeRequestRow[]> {
  let q = db.selectFrom("code_requests").selectAll();
  if (filter.state) q = q.where("state", "=", filter.state);
  if (filter.phoneNumber) q = q.where("phone_number", "=", filter.phoneNumber);
  if (filter.userId) q = q.where("user_id", "=", filter.userId);
  if (page.beforeId) q = q.where("id", "<", page.beforeId);
  return (await q.orderBy("id", "desc").limit(page.limit).execute()).map(toRow);
}

// ── Moves ──────────────────────────────────────────────────────────────────────────────

/** pending → acknowledged, keeping the challenge the callback must match. False when the move did not apply. */
export async function acknowledge(trx: Db, id: string, codeChallenge: string): Promise<boolean> {
  const row = await trx
    .updateTable("code_requests")
    .set((eb) => ({
      state: "acknowledged",
      status_message: STATUS_MESSAGES.acknowledged,
      code_challenge: codeChallenge,
      acknowledged_at: sql<Date>`clock_timestamp()`,
      attempt_count: eb("attempt_count", "+", 1),
      updated_at: sql<Date>`clock_timestamp()`,
    }))
    .where("id", "=", id)
    .where("state", "in", MOVES.acknowledge.from)
    .returning("id")
    .executeTakeFirst();
  return Boolean(row);
}

export interface ReceivedCode {
  code: string;
  status: ProviderStatus;
  /** When the answer came. */
  at: Date;
}

/**
 * Applies a move that receives a code and, in the same statement, writes `announce` (its
 * `code_received` event) to the outbox, only if the move applied: one round trip, atomic
 * without a transaction around it. `last`: the statement ends its transaction
 * (`lastInTransaction`: COMMIT goes with it).
 */
async function receive(
  db: Db,
  id: string,
  received: ReceivedCode,
  move: { from: readonly RequestState[]; challenge?: string; fingerprint?: string; countAttempt: boolean; last?: boolean },
  announce: OutboxRow,
): Promise<CodeRequestRow | undefined> {
  const state = stateForStatus(received.status);
  const statement = sql<Selectable<CodeRequestsTable>>`
    WITH moved AS (
      UPDATE code_requests
         SET state = ${state}, status_message = ${STATUS_MESSAGES[state]}, code = ${received.code}, provider_status = ${received.status},
             received_at = ${received.at}, updated_at = clock_timestamp()
             ${move.fingerprint !== undefined ? sql`, callback_fingerprint = ${move.fingerprint}` : sql``}
             ${move.countAttempt ? sql`, attempt_count = attempt_count + 1` : sql``}
       WHERE id = ${id} AND state IN (${sql.join(move.from)})
             ${move.challenge !== undefined ? sql`AND code_challenge = ${move.challenge}` : sql``}
      RETURNING ${COLUMNS}
    ), announced AS (
      INSERT INTO outbox (id, subject, payload, headers)
      SELECT ${announce.id}, ${announce.subject}, ${announce.payload}, ${announce.headers}::jsonb FROM moved
    )
    SELECT * FROM moved`;
  // Prepared: each combination of the optional parts is one fixed text.
  const { rows } = await prepared(move.last ? lastInTransaction(statement) : statement).execute(db);
  return one(rows[0]);
}

/**
 * The provider answered the call itself with the code. Counts the call as an attempt. The
 * worker's last statement in its transaction (`last`), so COMMIT goes with it.
 */
export function receiveInlineCode(db: Db, id: string, received: ReceivedCode, announce: OutboxRow, opts: { last?: boolean } = {}): Promise<CodeRequestRow | undefined> {
  return receive(db, id, received, { from: MOVES.receiveInline.from, countAttempt: true, last: opts.last }, announce);
}

/**
 * A callback whose verifier matched `codeChallenge`. Bound to that challenge: the update
 * only applies while the request still holds it.
 */
export function receiveCallbackCode(
  db: Db,
  id: string,
  codeChallenge: string,
  received: ReceivedCode & { fingerprint: string },
  announce: OutboxRow,
): Promise<CodeRequestRow | undefined> {
  return receive(db, id, received, { from: MOVES.receiveCallback.from, challenge: codeChallenge, fingerprint: received.fingerprint, countAttempt: false }, announce);
}

/** succeeded / late_succeeded → delivered. False when the move did not apply. */
export async function markDelivered(trx: Db, id: string): Promise<boolean> {
  const { rows } = await prepared(sql<{ id: string }>`
    UPDATE code_requests SET state = 'delivered', delivered_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE id = ${id} AND state IN (${sql.join(MOVES.deliver.from)})
    RETURNING id`).execute(trx);
  return rows.length > 0;
}

export interface Failure {
  /** For the customer and operators. */
  message: string;
  /** Whether an SMS should tell the customer (SMS requests whose channel still works). */
  notice: boolean;
  /** The provider's last error, for operators. */
  lastError?: string;
  /** Counts a provider call that failed as an attempt. */
  countAttempt?: boolean;
}

export async function fail(trx: Db, id: string, move: "failUnreachable" | "failUndeliverable", failure: Failure): Promise<CodeRequestRow | undefined> {
  return one(
    await trx
      .updateTable("code_requests")
      .set((eb) => ({
        state: "failed",
        status_message: move === "failUnreachable" ? STATUS_MESSAGES.failedUnreachable : STATUS_MESSAGES.failedUndeliverable,
        failure_message: failure.message,
        notice_pending: failure.notice ? sql<boolean>`channel = 'sms'` : false,
        ...(failure.lastError !== undefined ? { last_error: failure.lastError } : {}),
        ...(failure.countAttempt ? { attempt_count: eb("attempt_count", "+", 1) } : {}),
        updated_at: sql<Date>`clock_timestamp()`,
      }))
      .where("id", "=", id)
      .where("state", "in", MOVES[move].from)
      .returningAll()
      .executeTakeFirst(),
  );
}

/**
 * Counts a failed provider call of a pending request, on its own (outside the consumer's
 * transaction, which rolls back to have the event redelivered). Returns the new count, or
 * undefined when the request is no longer pending.
 */
export async function recordFailedAttempt(db: Kysely<ProviderDB>, id: string, error: string): Promise<number | undefined> {
  const row = await db
    .updateTable("code_requests")
    .set((eb) => ({ attempt_count: eb("attempt_count", "+", 1), last_error: error.slice(0, 500) }))
    .where("id", "=", id)
    .where("state", "=", "pending")
    .returning("attempt_count")
    .executeTakeFirst();
  return row?.attempt_count;
}

/**
 * Ends requests past their deadline: acknowledged ones EXPIRE (the callback never came),
 * pending ones FAIL (the provider never answered). Batches claimed with SKIP LOCKED, so
 * replicas sweeping at once share the work and each request moves once.
 */
export async function endOverdueRequests(db: Kysely<ProviderDB>, limit: number): Promise<{ id: string; state: RequestState }[]> {
  const result = await sql<{ id: string; state: RequestState }>`
    UPDATE code_requests r
       SET state = CASE WHEN r.state = 'acknowledged' THEN 'expired' ELSE 'failed' END,
           status_message = CASE WHEN r.state = 'acknowledged' THEN ${STATUS_MESSAGES.expired} ELSE ${STATUS_MESSAGES.failedUnreachable} END,
           failure_message = CASE WHEN r.state = 'acknowledged'
                                  THEN 'the provider acknowledged the request but did not call back by the deadline'
                                  ELSE 'the provider did not answer the request by the deadline' END,
           notice_pending = (r.channel = 'sms'),
           updated_at = now()
     WHERE r.id IN (SELECT id FROM code_requests
                     WHERE state IN ('pending', 'acknowledged') AND expire_at <= now()
                     ORDER BY expire_at
                     LIMIT ${limit}
                     FOR UPDATE SKIP LOCKED)
       AND r.state IN ('pending', 'acknowledged')
    RETURNING r.id, r.state`.execute(db);
  return result.rows;
}

/** One request whose customer is still to be told it failed or expired, locked for this transaction. */
export async function claimPendingNotice(trx: Transaction<ProviderDB>): Promise<CodeRequestRow | undefined> {
  return one(
    await trx
      .selectFrom("code_requests")
      .selectAll()
      .where("notice_pending", "=", true)
      .orderBy("updated_at")
      .limit(1)
      .forUpdate()
      .skipLocked()
      .executeTakeFirst(),
  );
}

export async function clearNotice(trx: Transaction<ProviderDB>, id: string): Promise<void> {
  await trx.updateTable("code_requests").set({ notice_pending: false }).where("id", "=", id).execute();
}

/** A request's row locked until the end of the transaction (delivery holds it while it sends). */
export async function lockCodeRequest(trx: Transaction<ProviderDB>, id: string): Promise<CodeRequestRow | undefined> {
  return one(await trx.selectFrom("code_requests").selectAll().where("id", "=", id).forUpdate().executeTakeFirst());
}
