import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { sql, type Kysely, type Migration } from "kysely";
import pg from "pg";
import { createDb, ensureDatabase, executePrepared, lastInTransaction, prepared, withDatabase } from "../db.js";
import { newId } from "../ids.js";
import { createLogger } from "../log.js";
import { runMigrations } from "../migrate.js";
import { createTestDatabase, uniqueSuffix, type TestDatabase } from "../testing.js";

const log = createLogger("kit-db-test", process.env.LOG_LEVEL ?? "silent");

describe("ids", () => {
  test("newId returns UUIDv7 strings that sort in creation order", () => {
    const ids = Array.from({ length: 10_000 }, () => newId());
    for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual([...ids].sort(), ids);
    assert.equal(new Set(ids).size, ids.length);
    const ms = parseInt(ids[0].replace(/-/g, "").slice(0, 12), 16);
    assert.ok(Math.abs(ms - Date.now()) < 5_000, "the first 48 bits are the current time in ms");
  });
});

describe("db and migrations", () => {
  let testDb: TestDatabase;
  const dbs: Kysely<any>[] = [];
  const open = (schema: string) => {
    const db = createDb<any>({ url: testDb.url, schema, max: 4, log });
    dbs.push(db);
    return db;
  };

  before(async () => {
    testDb = await createTestDatabase("kit_db");
  });

  after(async () => {
    await Promise.all(dbs.map((db) => db.destroy()));
    await testDb?.drop();
  });

  test("ensureDatabase creates a missing database once, however many callers race", async () => {
    const url = withDatabase(testDb.url, `vouch_t_ensure_${uniqueSuffix()}`);
    await Promise.all(Array.from({ length: 6 }, () => ensureDatabase(url)));
    await ensureDatabase(url); // and again when it already exists
    const client = new pg.Client({ connectionString: withDatabase(testDb.url, "postgres") });
    await client.connect();
    try {
      const name = new URL(url).pathname.slice(1);
      const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
      assert.equal(rowCount, 1);
      await client.query(`DROP DATABASE "${name}" WITH (FORCE)`);
    } finally {
      await client.end();
    }
  });

  test("createDb sessions resolve unqualified table names in the service's own schema", async () => {
    const a = open("svc_a");
    const b = open("svc_b");
    await sql`CREATE SCHEMA svc_a; CREATE SCHEMA svc_b`.execute(a);
    await sql`CREATE TABLE things (name text)`.execute(a);
    await sql`CREATE TABLE things (name text)`.execute(b);
    await a.insertInto("things").values({ name: "from a" }).execute();
    assert.deepEqual(await b.selectFrom("things").selectAll().execute(), []);
    assert.deepEqual(await a.selectFrom("svc_a.things").select("name").execute(), [{ name: "from a" }]);
  });

  test("a statement marked prepared is parsed once per connection and reused; unmarked statements are not kept", async () => {
    const db = open("kit_prepared");
    await db.connection().execute(async (conn) => {
      for (let i = 0; i < 3; i++) {
        const { rows } = await prepared(sql<{ n: number }>`SELECT ${i}::int + 1 AS n`).execute(conn);
        assert.equal(rows[0].n, i + 1, "each call gets its own values");
      }
      await sql`SELECT ${1}::int AS unmarked`.execute(conn);
      const { rows } = await sql<{ statement: string; from_sql: boolean }>`SELECT statement, from_sql FROM pg_prepared_statements`.execute(conn);
      assert.equal(rows.length, 1, `one statement kept: ${rows.map((r) => r.statement).join(" | ")}`);
      assert.match(rows[0].statement, /vouch:prepared/);
      assert.equal(rows[0].from_sql, false, "prepared by the protocol, not by a PREPARE");
    });
  });

  test("a query made with the builder runs prepared too: one statement kept, each call with its own values", async () => {
    const db = open("kit_prepared_builder");
    await sql`CREATE SCHEMA kit_prepared_builder; CREATE TABLE things (id int, name text)`.execute(db);
    await db.insertInto("things").values([{ id: 1, name: "one" }, { id: 2, name: "two" }]).execute();
    await db.connection().execute(async (conn) => {
      const find = (id: number) => executePrepared(conn, conn.selectFrom("things").select("name").where("id", "=", id));
      assert.deepEqual(await find(1), [{ name: "one" }]);
      assert.deepEqual(await find(2), [{ name: "two" }]);
      const { rows } = await sql<{ statement: string }>`SELECT statement FROM pg_prepared_statements`.execute(conn);
      assert.equal(rows.length, 1, `one statement kept: ${rows.map((r) => r.statement).join(" | ")}`);
      assert.match(rows[0].statement, /^\/\* vouch:prepared \*\/ select "name" from "things"/);
    });
  });

  describe("a transaction's BEGIN travels with its first statement", () => {
    /** Round trips made while `fn` runs: each ends with one ReadyForQuery from the server. */
    async function roundTrips(fn: () => Promise<unknown>): Promise<number> {
      const proto = (pg as unknown as { Connection: { prototype: { emit(name: string, ...a: unknown[]): boolean } } }).Connection.prototype;
      const emit = proto.emit;
      let n = 0;
      proto.emit = function (this: unknown, name: string, ...a: unknown[]) {
        if (name === "readyForQuery") n++;
        return emit.call(this, name, ...a);
      };
      try {
        await fn();
      } finally {
        proto.emit = emit;
      }
      return n;
    }

    let db: Kysely<any>;
    before(async () => {
      db = open("kit_begin");
      await sql`CREATE SCHEMA kit_begin; CREATE TABLE kit_begin.notes (id int PRIMARY KEY, body text)`.execute(db);
      await sql`SELECT 1`.execute(db); // a connection is open before anything is counted
    });

    test("BEGIN, two statements and COMMIT take three round trips, and the statements share one transaction", async () => {
      let xids: string[] = [];
      const trips = await roundTrips(() =>
        db.transaction().execute(async (trx) => {
          const a = await trx
            .insertInto("notes")
            .values({ id: 1, body: "one" })
            .returning(sql<string>`txid_current()::text`.as("x"))
            .executeTakeFirstOrThrow();
          const b = await sql<{ x: string }>`SELECT txid_current()::text AS x`.execute(trx);
          xids = [a.x, b.rows[0].x];
        }),
      );
      assert.equal(trips, 3, "the first statement carried BEGIN");
      assert.equal(xids[0], xids[1], "one transaction id for both statements");
      assert.deepEqual(await db.selectFrom("notes").select("body").where("id", "=", 1).execute(), [{ body: "one" }]);
    });

    test("a first statement without parameters carries BEGIN too, and the caller sees only its own result", async () => {
      const trips = await roundTrips(() =>
        db.transaction().execute(async (trx) => {
          const { rows } = await sql<{ n: number }>`SELECT 41 + 1 AS n`.execute(trx);
          assert.deepEqual(rows, [{ n: 42 }]);
        }),
      );
      assert.equal(trips, 2);
    });

    test("a rollback undoes what the carried first statement did", async () => {
      await assert.rejects(
        db.transaction().execute(async (trx) => {
          await trx.insertInto("notes").values({ id: 2, body: "gone" }).execute();
          throw new Error("changed my mind");
        }),
        /changed my mind/,
      );
      assert.deepEqual(await db.selectFrom("notes").selectAll().where("id", "=", 2).execute(), []);
    });

    test("a failing first statement rejects with its own error, and the session goes back to the pool clean", async () => {
      await assert.rejects(
        db.transaction().execute((trx) => trx.insertInto("notes").values({ id: 1, body: "duplicate" }).execute()),
        (err: Error & { code?: string }) => err.code === "23505",
      );
      // Every session of the pool (max 4) is idle, not inside a transaction left open.
      await Promise.all(Array.from({ length: 4 }, () => db.transaction().execute((trx) => trx.insertInto("notes").values({ id: Math.floor(Math.random() * 1e9) + 10, body: "x" }).execute())));
      const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'vouch-kit_begin' AND state LIKE 'idle in transaction%'`.execute(db);
      assert.equal(rows[0].n, 0);
    });

    test("an isolation level set on the transaction applies to the carried statement", async () => {
      const level = await db
        .transaction()
        .setIsolationLevel("serializable")
        .execute(async (trx) => (await sql<{ l: string }>`SELECT current_setting('transaction_isolation') AS l`.execute(trx)).rows[0].l);
      assert.equal(level, "serializable");
    });

    test("a transaction that runs no statement costs no round trip", async () => {
      assert.equal(await roundTrips(() => db.transaction().execute(async () => {})), 0);
      await assert.rejects(db.transaction().execute(async () => Promise.reject(new Error("before anything"))), /before anything/);
    });

    test("a statement marked prepared carries BEGIN too, on its first use on a session and after", async () => {
      const one = createDb<any>({ url: testDb.url, schema: "kit_begin", max: 1, log });
      dbs.push(one);
      const run = () =>
        one.transaction().execute(async (trx) => {
          const a = await prepared(sql<{ x: string }>`SELECT txid_current()::text AS x, ${1}::int AS one`).execute(trx);
          const b = await sql<{ x: string }>`SELECT txid_current()::text AS x`.execute(trx);
          assert.equal(a.rows[0].x, b.rows[0].x, "one transaction");
        });
      await sql`SELECT 1`.execute(one);
      assert.equal(await roundTrips(run), 3, "parsed, begun and run in one round trip");
      assert.equal(await roundTrips(run), 3, "then begun and run from the prepared statement");
    });

    test("a prepared statement whose parse fails is parsed again next time, once it can be", async () => {
      const one = createDb<any>({ url: testDb.url, schema: "kit_begin", max: 1, log });
      dbs.push(one);
      const count = () =>
        one.transaction().execute(async (trx) => (await prepared(sql<{ n: number }>`SELECT count(*)::int AS n FROM later WHERE ${1}::int = 1`).execute(trx)).rows[0].n);
      await assert.rejects(count(), /relation "later" does not exist/);
      await sql`CREATE TABLE later (id int)`.execute(one);
      assert.equal(await count(), 0, "the same session parses it now instead of binding a statement that never existed");
    });

    describe("a statement marked lastInTransaction takes COMMIT along", () => {
      test("a transaction of one such statement is one round trip, of two statements two, and what they did is committed", async () => {
        const one = await roundTrips(() => db.transaction().execute((trx) => lastInTransaction(sql`INSERT INTO notes (id, body) VALUES (${100}, 'last')`).execute(trx)));
        assert.equal(one, 1, "BEGIN, the statement and COMMIT in one message");
        const two = await roundTrips(() =>
          db.transaction().execute(async (trx) => {
            await trx.insertInto("notes").values({ id: 101, body: "first" }).execute();
            await prepared(lastInTransaction(sql`UPDATE notes SET body = ${"last"} WHERE id = ${101}`)).execute(trx);
          }),
        );
        assert.equal(two, 2);
        const other = createDb<any>({ url: testDb.url, schema: "kit_begin", max: 1, log });
        dbs.push(other);
        assert.deepEqual(await other.selectFrom("notes").select(["id", "body"]).where("id", "in", [100, 101]).orderBy("id").execute(), [
          { id: 100, body: "last" },
          { id: 101, body: "last" },
        ]);
      });

      test("when the last statement fails nothing of the transaction is kept", async () => {
        await assert.rejects(
          db.transaction().execute(async (trx) => {
            await trx.insertInto("notes").values({ id: 102, body: "kept?" }).execute();
            await lastInTransaction(sql`INSERT INTO notes (id, body) VALUES (${1}, 'duplicate')`).execute(trx);
          }),
          (err: Error & { code?: string }) => err.code === "23505",
        );
        assert.deepEqual(await db.selectFrom("notes").selectAll().where("id", "=", 102).execute(), []);
      });

      test("a statement after it is refused, since the transaction is over", async () => {
        await assert.rejects(
          db.transaction().execute(async (trx) => {
            await lastInTransaction(sql`INSERT INTO notes (id, body) VALUES (${103}, 'last')`).execute(trx);
            await trx.insertInto("notes").values({ id: 104, body: "after" }).execute();
          }),
          /already committed/,
        );
        assert.deepEqual(await db.selectFrom("notes").select("id").where("id", "in", [103, 104]).execute(), [{ id: 103 }]);
        await db.transaction().execute((trx) => trx.insertInto("notes").values({ id: 105, body: "next" }).execute()); // the session is fine
      });

      test("outside a transaction it is an ordinary statement", async () => {
        await lastInTransaction(sql`INSERT INTO notes (id, body) VALUES (${106}, 'alone')`).execute(db);
        await db.insertInto("notes").values({ id: 107, body: "then" }).execute();
        assert.equal((await db.selectFrom("notes").select("id").where("id", "in", [106, 107]).execute()).length, 2);
      });
    });
  });

  test("createDb rejects a schema name that is not a plain identifier", () => {
    assert.throws(() => createDb({ url: testDb.url, schema: "auth; DROP TABLE x" }), /schema/);
    assert.throws(() => createDb({ url: testDb.url, schema: "Auth" }), /schema/);
  });

  test("two replicas migrating a fresh schema at once both succeed and apply each migration once", async () => {
    const runs: Record<string, number> = {};
    const migration = (name: string, ddl: string): Migration => ({
      async up(db) {
        runs[name] = (runs[name] ?? 0) + 1;
        await sql`SELECT pg_sleep(0.1)`.execute(db); // widen the window a race would need
        await sql.raw(ddl).execute(db);
      },
    });
    const migrations = {
      "0001_accounts": migration("0001_accounts", "CREATE TABLE accounts (id text PRIMARY KEY)"),
      "0002_orders": migration("0002_orders", "CREATE TABLE orders (id text PRIMARY KEY, account_id text REFERENCES accounts)"),
    };
    const [first, second] = await Promise.all([
      runMigrations(open("svc_race"), { schema: "svc_race", migrations, log }),
      runMigrations(open("svc_race"), { schema: "svc_race", migrations, log }),
    ]);
    assert.deepEqual(runs, { "0001_accounts": 1, "0002_orders": 1 });
    assert.deepEqual([...first, ...second].sort(), ["0001_accounts", "0002_orders"], "one replica applied both, the other none");
    const db = open("svc_race");
    const applied = await db.selectFrom("kysely_migration").select("name").orderBy("name").execute();
    assert.deepEqual(applied.map((r) => r.name), ["0001_accounts", "0002_orders"]);
    await db.insertInto("accounts").values({ id: "a1" }).execute(); // the tables really are there
    assert.deepEqual(await runMigrations(db, { schema: "svc_race", migrations, log }), [], "a restart applies nothing");
  });

  test("a failing migration throws an error naming it and leaves the schema as it was", async () => {
    const db = open("svc_broken");
    const migrations: Record<string, Migration> = {
      "0001_ok": { up: async (d) => void (await sql`CREATE TABLE fine (id int)`.execute(d)) },
      "0002_broken": { up: async (d) => void (await sql`CREATE TABLE fine (id int)`.execute(d)) },
    };
    await assert.rejects(runMigrations(db, { schema: "svc_broken", migrations, log }), (err: Error) => {
      assert.match(err.message, /svc_broken\/0002_broken failed: .*already exists/);
      return true;
    });
    const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'svc_broken' AND table_name = 'fine'`.execute(db);
    assert.equal(rows[0].n, 0, "the whole run rolled back");
    // The lock was released: a corrected set of migrations goes through.
    delete migrations["0002_broken"];
    assert.deepEqual(await runMigrations(db, { schema: "svc_broken", migrations, log }), ["0001_ok"]);
  });
});
