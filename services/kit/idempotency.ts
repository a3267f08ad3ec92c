// Request ids for retryable mutations (AIP-155), the same way in every service.
//
// The id's row is inserted first, in the same transaction as the effect, and the response
// is stored in that transaction too. A concurrent call with the same id blocks on that
// insert until the first commits (then gets the stored response) or rolls back (then runs
// itself). The same id with a different request is ALREADY_EXISTS / REQUEST_ID_REUSED.
//
// Four levels, one table and one set of rules:
// - `runIdempotent`: a protobuf response in, the same message out on a replay;
// - `runOnce`: any result with its own encoding (bytes stored, bytes replayed), and the
//   transaction opened by the caller's own runner (e.g. one that retries deadlocks);
// - `claimRequestId` / `recordResponse`: for a transaction the caller already holds;
// - `insertOnce`: claim, effect and response in one statement, for an insert whose response
//   is known before it runs (one round trip instead of three).
import { createHash } from "node:crypto";
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { sql, type ColumnType, type Kysely, type Migration, type RawBuilder, type Transaction } from "kysely";
import { lastInTransaction, prepared } from "./db.js";
import { alreadyExists, type FieldViolation, type VouchError } from "./errors.js";
import type { Logger } from "./log.js";

export interface IdempotencyKeyTable {
  /** The rpc (or domain operation) the id belongs to: ids are scoped per operation. */
  operation: string;
  request_id: string;
  /** Who sent it: the same id from two callers is two requests. */
  caller: string;
  /** Hash of the request without its request_id. */
  fingerprint: string;
  /** The response, as the operation encodes it (protobuf binary for rpcs), written when the effect commits. */
  response: Uint8Array;
  created_at: ColumnType<Date, never, never>;
}

/** Merge into a service's kysely DB interface, like `EventTables`. */
export interface IdempotencyTables {
  idempotency_keys: IdempotencyKeyTable;
}

export const idempotencyMigration: Migration = {
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("idempotency_keys")
      .addColumn("operation", "text", (c) => c.notNull())
      .addColumn("request_id", "text", (c) => c.notNull())
      .addColumn("caller", "text", (c) => c.notNull())
      .addColumn("fingerprint", "text", (c) => c.notNull())
      .addColumn("response", "bytea", (c) => c.notNull())
      .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addPrimaryKeyConstraint("idempotency_keys_pk", ["operation", "caller", "request_id"])
      .execute();
    await db.schema.createIndex("idempotency_keys_created_at").on("idempotency_keys").column("created_at").execute();
  },
};

/** Longest request id accepted (they are client-chosen, usually a UUID). */
export const MAX_REQUEST_ID_LENGTH = 64;

/**
 * The field violation of a malformed `request_id`, or undefined: the one format rule every
 * service applies (non-empty when required, at most 64 characters).
 */
export function requestIdViolation(requestId: string, required = false, field = "request_id"): FieldViolation | undefined {
  if (!requestId) return required ? { field, reason: "REQUEST_ID_REQUIRED", description: "is required" } : undefined;
  if (requestId.length > MAX_REQUEST_ID_LENGTH) {
    return { field, reason: "REQUEST_ID_INVALID", description: `must be at most ${MAX_REQUEST_ID_LENGTH} characters` };
  }
  return undefined;
}

/** ALREADY_EXISTS / REQUEST_ID_REUSED: this id was used with another request. */
export function requestIdReused(requestId: string): VouchError {
  return alreadyExists("REQUEST_ID_REUSED", `request_id ${requestId} was already used with a different request`, { requestId });
}

/** A stable hash of a request message with its `requestId` field cleared. */
export function fingerprintRequest<Desc extends DescMessage>(schema: Desc, request: MessageShape<Desc>): string {
  const withoutId = { ...request, requestId: "" } as MessageShape<Desc>;
  return createHash("sha256").update(toBinary(schema, withoutId)).digest("base64url");
}

/** A stable hash of plain data (for operations whose input is not a protobuf message). */
export function fingerprintOf(value: unknown): string {
  return createHash("sha256").update(JSON.stringify(value)).digest("base64url");
}

/** Which request a row stands for. An empty `requestId` means "no idempotency asked". */
export interface RequestKey {
  operation: string;
  requestId: string;
  caller: string;
  fingerprint: string;
}

export type RequestClaim = { kind: "new" } | { kind: "replay"; response: Uint8Array };

const EMPTY = new Uint8Array();

type ClaimRow = { claimed: boolean; fingerprint: string | null; response: Uint8Array | null };

/** The `claim` CTE: the id's row, inserted unless it is there (then no row), holding `response`. */
const claimCte = (key: RequestKey, response: Uint8Array) => sql`claim AS (
      INSERT INTO idempotency_keys (operation, request_id, caller, fingerprint, response)
      VALUES (${key.operation}, ${key.requestId}, ${key.caller}, ${key.fingerprint}, ${response})
      ON CONFLICT (operation, caller, request_id) DO NOTHING
      RETURNING true AS claimed)`;

/** After `claim`: one row saying it was claimed, or the row that was there. */
const claimOutcome = (key: RequestKey) => sql<ClaimRow>`
    SELECT claimed, NULL::text AS fingerprint, NULL::bytea AS response FROM claim
    UNION ALL
    SELECT false, fingerprint, response FROM idempotency_keys
    WHERE operation = ${key.operation} AND caller = ${key.caller} AND request_id = ${key.requestId}
      AND NOT EXISTS (SELECT 1 FROM claim)`;

async function settleClaim(db: Kysely<IdempotencyTables>, key: RequestKey, rows: ClaimRow[]): Promise<RequestClaim> {
  // The conflicting row's transaction committed after this statement's snapshot was taken,
  // so the SELECT arm cannot see it yet: read it again in a fresh statement.
  const first = rows[0] ?? (await readRequestId(db, key));
  if (first.claimed) return { kind: "new" };
  if (first.fingerprint !== key.fingerprint) throw requestIdReused(key.requestId);
  return { kind: "replay", response: new Uint8Array(first.response!) };
}

/**
 * Claims the request id inside `trx` (blocking while another transaction holds it), or
 * returns the response stored by the call that committed it. Throws REQUEST_ID_REUSED when
 * the id was committed with a different request.
 */
export async function claimRequestId<DB>(trx: Transaction<DB>, key: RequestKey): Promise<RequestClaim> {
  const keys = trx as unknown as Transaction<IdempotencyTables>;
  // One round trip either way: the insert, or on conflict the row that is there. Prepared:
  // every keyed write of every service runs it.
  const { rows } = await prepared(sql<ClaimRow>`WITH ${claimCte(key, EMPTY)} ${claimOutcome(key)}`).execute(keys);
  return settleClaim(keys, key, rows);
}

/**
 * A keyed write in one round trip: the claim, the effect and the stored response are one
 * autocommitted statement, where `runIdempotent` takes three (claim, effect, response with
 * COMMIT). For effects that are one statement's inserts (a row and its outbox event, say)
 * whose response is known before they run, because the caller chose every column.
 *
 * `effect(claim)` gives the statement's data-modifying CTEs (`name AS (…), …`), each taking
 * its rows from `claim`: one row when the id is new (or no id was given), none otherwise, so a
 * replay or a reused id writes nothing. The same rules as `claimRequestId` otherwise.
 */
export async function insertOnce<DB>(db: Kysely<DB>, key: RequestKey, response: Uint8Array, effect: (claim: RawBuilder<unknown>) => RawBuilder<unknown>): Promise<RequestClaim> {
  const keys = db as unknown as Kysely<IdempotencyTables>;
  const claim = sql.raw("claim");
  if (!key.requestId) {
    await prepared(sql`WITH claim AS (SELECT true AS claimed), ${effect(claim)} SELECT claimed FROM claim`).execute(keys);
    return { kind: "new" };
  }
  const { rows } = await prepared(sql<ClaimRow>`WITH ${claimCte(key, response)}, ${effect(claim)} ${claimOutcome(key)}`).execute(keys);
  return settleClaim(keys, key, rows);
}

async function readRequestId(keys: Kysely<IdempotencyTables>, key: RequestKey) {
  const row = await keys
    .selectFrom("idempotency_keys")
    .select(["fingerprint", "response"])
    .where("operation", "=", key.operation)
    .where("caller", "=", key.caller)
    .where("request_id", "=", key.requestId)
    .executeTakeFirstOrThrow();
  return { claimed: false, ...row };
}

/**
 * Stores the response of a claimed request id, as the last statement of its effect's
 * transaction: COMMIT goes out with it (`lastInTransaction`).
 */
export async function recordResponse<DB>(trx: Transaction<DB>, key: RequestKey, response: Uint8Array): Promise<void> {
  await prepared(
    lastInTransaction(sql`
    UPDATE idempotency_keys SET response = ${response}
    WHERE operation = ${key.operation} AND caller = ${key.caller} AND request_id = ${key.requestId}`),
  ).execute(trx);
}

/** Opens a transaction and runs `work` in it (e.g. `db.transaction().execute`, or one that retries deadlocks). */
export type TransactionRunner<DB> = <T>(work: (trx: Transaction<DB>) => Promise<T>) => Promise<T>;

/** A request id to honour, and how the result is stored (for rpcs: the response message's binary). */
export interface Idempotency<R> {
  /** An empty request id means "no idempotency asked". */
  key: RequestKey;
  encode: (result: R) => Uint8Array;
}

/** The stored bytes of an earlier call, or this call's result (and its encoding when keyed). */
export type OnceOutcome<R> = { replay: Uint8Array } | { result: R; encoded?: Uint8Array };

/**
 * `runIdempotent` for results that are not protobuf messages yet, replaying the raw stored
 * bytes (byte-identical answers). Without `idem` (or with an empty request id) `run` just
 * runs in a transaction; `transaction` opens it (default `db.transaction().execute`, or a
 * runner that retries deadlocks).
 */
export async function runOnce<DB, R>(
  db: Kysely<DB>,
  idem: Idempotency<R> | undefined,
  run: (trx: Transaction<DB>) => Promise<R>,
  transaction: TransactionRunner<DB> = (work) => db.transaction().execute(work),
): Promise<OnceOutcome<R>> {
  const key = idem?.key.requestId ? idem.key : undefined;
  return transaction(async (trx): Promise<OnceOutcome<R>> => {
    if (!key) return { result: await run(trx) };
    const claim = await claimRequestId(trx, key);
    if (claim.kind === "replay") return { replay: claim.response };
    const result = await run(trx);
    const encoded = idem!.encode(result);
    await recordResponse(trx, key, encoded);
    return { result, encoded };
  });
}

export interface IdempotentCall<DB, ResDesc extends DescMessage> {
  operation: string;
  requestId: string;
  caller: string;
  fingerprint: string;
  responseSchema: ResDesc;
  /** The effect; runs at most once per (operation, caller, request id) that commits. */
  run: (trx: Transaction<DB>) => Promise<MessageShape<ResDesc>>;
  transaction?: TransactionRunner<DB>;
}

/**
 * Runs `run` in a transaction unless this request id already committed, in which case the
 * first response is returned as it was. An empty request id means "no idempotency asked".
 */
export async function runIdempotent<DB extends IdempotencyTables, ResDesc extends DescMessage>(
  db: Kysely<DB>,
  call: IdempotentCall<DB, ResDesc>,
): Promise<MessageShape<ResDesc>> {
  const idem = { key: call, encode: (response: MessageShape<ResDesc>) => toBinary(call.responseSchema, response) };
  const outcome = await runOnce(db, idem, call.run, call.transaction);
  return "replay" in outcome ? fromBinary(call.responseSchema, outcome.replay) : outcome.result;
}

/** Forgets request ids older than `keepMs` (retries come within minutes; keep a day or more). */
export async function pruneRequestIds<DB>(db: Kysely<DB>, keepMs: number): Promise<number> {
  const result = await (db as unknown as Kysely<IdempotencyTables>)
    .deleteFrom("idempotency_keys")
    .where("created_at", "<", sql<Date>`now() - make_interval(secs => ${keepMs / 1000})`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

export interface RequestIdPruning {
  /** How long a request id is remembered (default 7 days). */
  keepMs?: number;
  /** How often each replica prunes (default hourly; a delete by age is safe on every replica). */
  everyMs?: number;
}

/** Prunes old request ids periodically; `startPlatform` runs it for services that ask. */
export function startRequestIdPruning<DB>(db: Kysely<DB>, log: Logger, opts: RequestIdPruning = {}): { stop(): Promise<void> } {
  const keepMs = opts.keepMs ?? 7 * 24 * 3600_000;
  const everyMs = opts.everyMs ?? 3600_000;
  let running: Promise<void> = Promise.resolve();
  const prune = () => {
    running = running.then(async () => {
      try {
        const pruned = await pruneRequestIds(db, keepMs);
        if (pruned) log.debug({ pruned }, "old request ids pruned");
      } catch (err) {
        log.warn({ err }, "cannot prune old request ids; will retry");
      }
    });
  };
  // The first prune a little after start, so replicas started together spread out.
  const first = setTimeout(prune, Math.min(everyMs, 60_000 + Math.random() * 60_000));
  const timer = setInterval(prune, everyMs);
  first.unref();
  timer.unref();
  return {
    async stop() {
      clearTimeout(first);
      clearInterval(timer);
      await running;
    },
  };
}
