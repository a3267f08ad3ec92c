import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { StringValueSchema } from "@bufbuild/protobuf/wkt";
import { sql, type Kysely, type Transaction } from "kysely";
import pg from "pg";
import { RedeemVoucherRequestSchema } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { createDb } from "../db.js";
import { runMigrations } from "../migrate.js";
import { createLogger } from "../log.js";
import { createTestDatabase, type TestDatabase } from "../testing.js";
import { fingerprintRequest, idempotencyMigration, insertOnce, requestIdViolation, runIdempotent, runOnce, startRequestIdPruning, type IdempotencyTables } from "../idempotency.js";
import { reasonOf, toConnectError } from "../errors.js";

interface DB extends IdempotencyTables {
  effects: { id: string; note: string };
}

describe("request ids (AIP-155)", () => {
  let testDb: TestDatabase;
  let db: Kysely<DB>;

  before(async () => {
    testDb = await createTestDatabase("idempotency");
    db = createDb<DB>({ url: testDb.url, schema: "svc", max: 30 });
    await runMigrations(db, {
      schema: "svc",
      log: createLogger("test", "silent"),
      migrations: {
        "0000_idempotency": idempotencyMigration,
        "0001_effects": { up: (d) => d.schema.createTable("effects").addColumn("id", "text", (c) => c.primaryKey()).addColumn("note", "text").execute() },
      },
    });
  });
  after(async () => {
    await db.destroy();
    await testDb.drop();
  });

  const redeem = (code: string, requestId: string) => create(RedeemVoucherRequestSchema, { code, requestId, orderReference: "order-1" });
  const call = (request: ReturnType<typeof redeem>, caller = "user-1", fail = false) =>
    runIdempotent(db, {
      operation: "RedeemVoucher",
      requestId: request.requestId,
      caller,
      fingerprint: fingerprintRequest(RedeemVoucherRequestSchema, request),
      responseSchema: StringValueSchema,
      run: async (trx) => {
        const id = `${caller}:${request.requestId}:${Math.random()}`;
        await trx.insertInto("effects").values({ id, note: request.code }).execute();
        await sql`SELECT pg_sleep(0.02)`.execute(trx); // widen the race window
        if (fail) throw new Error("the effect failed");
        return create(StringValueSchema, { value: id });
      },
    });
  const effects = async (code: string) => (await db.selectFrom("effects").select("id").where("note", "=", code).execute()).length;

  test("20 concurrent calls with one request id run the effect once and all get the first response", async () => {
    const responses = await Promise.all(Array.from({ length: 20 }, () => call(redeem("CODE-A", "req-a"))));
    assert.equal(new Set(responses.map((r) => r.value)).size, 1);
    assert.equal(await effects("CODE-A"), 1);
  });

  test("the same request id with a different request is ALREADY_EXISTS / REQUEST_ID_REUSED and changes nothing", async () => {
    await call(redeem("CODE-B", "req-b"));
    const err = await call(redeem("CODE-OTHER", "req-b")).then(() => undefined, (e: unknown) => e);
    assert.equal(reasonOf(toConnectError(err, "test")), "REQUEST_ID_REUSED");
    assert.equal(await effects("CODE-OTHER"), 0);
  });

  test("a first attempt that rolled back leaves the id free for the retry", async () => {
    await assert.rejects(call(redeem("CODE-C", "req-c"), "user-1", true), /the effect failed/);
    assert.equal(await effects("CODE-C"), 0);
    await call(redeem("CODE-C", "req-c"));
    assert.equal(await effects("CODE-C"), 1);
  });

  test("request ids are scoped per caller, and an empty id means no idempotency", async () => {
    await call(redeem("CODE-D", "req-d"), "user-1");
    await call(redeem("CODE-D", "req-d"), "user-2");
    assert.equal(await effects("CODE-D"), 2);
    await call(redeem("CODE-E", ""));
    await call(redeem("CODE-E", ""));
    assert.equal(await effects("CODE-E"), 2);
  });

  test("runOnce replays the stored bytes of a result that is not a protobuf message", async () => {
    const idem = { key: { operation: "Register", requestId: "req-f", caller: "", fingerprint: "f" }, encode: (id: string) => new TextEncoder().encode(id) };
    const run = async (trx: Transaction<DB>) => {
      const id = `user-${Math.random()}`;
      await trx.insertInto("effects").values({ id, note: "CODE-F" }).execute();
      return id;
    };
    const first = await runOnce(db, idem, run);
    const again = await runOnce(db, idem, run);
    assert.ok("result" in first && "replay" in again);
    assert.equal(new TextDecoder().decode(again.replay), first.result);
    assert.equal(await effects("CODE-F"), 1);
  });

  test("old request ids are pruned periodically, recent ones kept", async () => {
    await call(redeem("CODE-G", "req-old"));
    await call(redeem("CODE-G", "req-new"));
    await sql`UPDATE idempotency_keys SET created_at = now() - interval '2 days' WHERE request_id = 'req-old'`.execute(db);
    const pruning = startRequestIdPruning(db, createLogger("test", "silent"), { keepMs: 86_400_000, everyMs: 50 });
    try {
      const ids = async () => (await db.selectFrom("idempotency_keys").select("request_id").where("request_id", "in", ["req-old", "req-new"]).execute()).map((r) => r.request_id);
      const deadline = Date.now() + 5_000;
      while ((await ids()).includes("req-old") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      assert.deepEqual(await ids(), ["req-new"]);
    } finally {
      await pruning.stop();
    }
  });

  describe("insertOnce: claim, effect and stored response in one statement", () => {
    /** Writes an effect row for `code` unless the request id was used; its response is the row's id. */
    const noteCall = (code: string, requestId: string, caller = "user-1") => ({
      operation: "InsertNote",
      requestId,
      caller,
      fingerprint: fingerprintRequest(RedeemVoucherRequestSchema, redeem(code, requestId)),
      responseSchema: StringValueSchema,
    });
    const insertNote = async (code: string, requestId: string, opts: { caller?: string; id?: string; on?: Kysely<DB> } = {}) => {
      const caller = opts.caller ?? "user-1";
      const id = opts.id ?? `${caller}:${requestId}:${Math.random()}`;
      const claim = await insertOnce(opts.on ?? db, noteCall(code, requestId, caller), new TextEncoder().encode(id), (claimed) => sql`written AS (INSERT INTO effects (id, note) SELECT ${id}, ${code} FROM ${claimed})`);
      return claim.kind === "new" ? id : new TextDecoder().decode(claim.response);
    };
    /** The messages `work` sends to Postgres, on a pool of its own opened with pg's real client watched. */
    const messagesOf = async (work: (on: Kysely<DB>) => Promise<unknown>) => {
      const query = pg.Client.prototype.query;
      let sent = 0;
      pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
        sent++;
        return (query as (...a: unknown[]) => unknown).apply(this, args);
      } as typeof query;
      const own = createDb<DB>({ url: testDb.url, schema: "svc", max: 1 });
      try {
        await sql`SELECT 1`.execute(own); // connected (and its session set up) before counting
        sent = 0;
        await work(own);
        return sent;
      } finally {
        pg.Client.prototype.query = query;
        await own.destroy();
      }
    };

    test("50 concurrent calls with one request id write once, and every one gets the first response", async () => {
      const answers = await Promise.all(Array.from({ length: 50 }, () => insertNote("NOTE-A", "note-a")));
      assert.equal(new Set(answers).size, 1, "one response for all");
      assert.equal(await effects("NOTE-A"), 1);
    });

    test("a first call and its replay are one message to Postgres each, with no transaction around them", async () => {
      assert.equal(await messagesOf((on) => insertNote("NOTE-B", "note-b", { on })), 1);
      assert.equal(await messagesOf((on) => insertNote("NOTE-B", "note-b", { on })), 1);
      assert.equal(await effects("NOTE-B"), 1);
      // What it replaces: runIdempotent's claim, effect, and response with COMMIT.
      assert.equal(await messagesOf((on) => runIdempotent(on, { ...noteCall("NOTE-B2", "note-b2"), run: async (trx) => (await trx.insertInto("effects").values({ id: "b2", note: "NOTE-B2" }).execute(), create(StringValueSchema, { value: "b2" })) })), 3);
    });

    test("the same id with another request is REQUEST_ID_REUSED and writes nothing; a failed effect keeps the id free", async () => {
      await insertNote("NOTE-C", "note-c");
      const err = await insertNote("NOTE-OTHER", "note-c").then(() => undefined, (e: unknown) => e);
      assert.equal(reasonOf(toConnectError(err, "test")), "REQUEST_ID_REUSED");
      assert.equal(await effects("NOTE-OTHER"), 0);

      // An effect that fails (its row's key is taken) takes the claim down with it.
      const taken = await insertNote("NOTE-D", "note-d-1");
      await assert.rejects(insertNote("NOTE-D", "note-d-2", { id: taken }), /duplicate key/);
      assert.equal(await insertNote("NOTE-D", "note-d-2", { id: "note-d-2-retry" }), "note-d-2-retry");
      assert.equal(await effects("NOTE-D"), 2);
    });

    test("request ids are scoped per caller, and an empty id writes every time", async () => {
      await insertNote("NOTE-E", "note-e", { caller: "user-1" });
      await insertNote("NOTE-E", "note-e", { caller: "user-2" });
      assert.equal(await effects("NOTE-E"), 2);
      await insertNote("NOTE-F", "");
      await insertNote("NOTE-F", "");
      assert.equal(await effects("NOTE-F"), 2);
    });
  });

  test("a request id is at most 64 characters, and required only where the rpc says so", () => {
    assert.equal(requestIdViolation(""), undefined);
    assert.equal(requestIdViolation("", true)?.reason, "REQUEST_ID_REQUIRED");
    assert.equal(requestIdViolation("x".repeat(64)), undefined);
    assert.equal(requestIdViolation("x".repeat(65))?.reason, "REQUEST_ID_INVALID");
  });
});
