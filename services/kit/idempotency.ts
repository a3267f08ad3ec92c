// Request ids for retryable mutations (AIP-155), the same way in every service.
//
// The id's row is inserted first, in the same transaction as the effect, and the response
// is stored in that transaction too. A concurrent call with the same id blocks on that
// insert until the first commits (then gets the stored response) or rolls back (then runs
// itself). The same id with a different request is ALREADY_EXISTS / REQUEST_ID_REUSED.
import { createHash } from "node:crypto";
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { sql, type ColumnType, type Kysely, type Migration, type Transaction } from "kysely";
import { alreadyExists } from "./errors.js";

export interface IdempotencyKeyTable {
  /** The rpc (or domain operation) the id belongs to: ids are scoped per operation. */
  operation: string;
  request_id: string;
  /** Who sent it: the same id from two callers is two requests. */
  caller: string;
  /** Hash of the request without its request_id. */
  fingerprint: string;
  /** The response, protobuf binary, written when the effect commits. */
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

/** A stable hash of a request message with its `requestId` field cleared. */
export function fingerprintRequest<Desc extends DescMessage>(schema: Desc, request: MessageShape<Desc>): string {
  const withoutId = { ...request, requestId: "" } as MessageShape<Desc>;
  return createHash("sha256").update(toBinary(schema, withoutId)).digest("base64url");
}

export interface IdempotentCall<DB, ResDesc extends DescMessage> {
  operation: string;
  requestId: string;
  caller: string;
  fingerprint: string;
  responseSchema: ResDesc;
  /** The effect; runs at most once per (operation, caller, request id) that commits. */
  run: (trx: Transaction<DB>) => Promise<MessageShape<ResDesc>>;
}

/**
 * Runs `run` in a transaction unless this request id already committed, in which case the
 * first response is returned as it was. An empty request id means "no idempotency asked".
 */
export async function runIdempotent<DB extends IdempotencyTables, ResDesc extends DescMessage>(
  db: Kysely<DB>,
  call: IdempotentCall<DB, ResDesc>,
): Promise<MessageShape<ResDesc>> {
  return db.transaction().execute(async (trx) => {
    if (!call.requestId) return call.run(trx);
    const keys = trx as unknown as Transaction<IdempotencyTables>;
    const claimed = await keys
      .insertInto("idempotency_keys")
      .values({ operation: call.operation, request_id: call.requestId, caller: call.caller, fingerprint: call.fingerprint, response: new Uint8Array() })
      .onConflict((oc) => oc.columns(["operation", "caller", "request_id"]).doNothing())
      .returning("request_id")
      .executeTakeFirst();
    if (!claimed) {
      const first = await keys
        .selectFrom("idempotency_keys")
        .select(["fingerprint", "response"])
        .where("operation", "=", call.operation)
        .where("caller", "=", call.caller)
        .where("request_id", "=", call.requestId)
        .executeTakeFirstOrThrow();
      if (first.fingerprint !== call.fingerprint) {
        throw alreadyExists("REQUEST_ID_REUSED", `request_id ${call.requestId} was already used with a different request`, {
          requestId: call.requestId,
        });
      }
      return fromBinary(call.responseSchema, first.response);
    }
    const response = await call.run(trx);
    await keys
      .updateTable("idempotency_keys")
      .set({ response: toBinary(call.responseSchema, response) })
      .where("operation", "=", call.operation)
      .where("caller", "=", call.caller)
      .where("request_id", "=", call.requestId)
      .execute();
    return response;
  });
}

/** Forgets request ids older than `keepMs` (retries come within minutes; keep a day or more). */
export async function pruneRequestIds<DB extends IdempotencyTables>(db: Kysely<DB>, keepMs: number): Promise<number> {
  const result = await (db as unknown as Kysely<IdempotencyTables>)
    .deleteFrom("idempotency_keys")
    .where("created_at", "<", sql<Date>`now() - make_interval(secs => ${keepMs / 1000})`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
