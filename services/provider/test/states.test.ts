// The state machine where it is enforced: in Postgres. Racing moves on one request (an
// inline answer against a callback, a callback against the deadline sweep, replicas
// sweeping together) leave exactly one winner and one event; the table refuses rows that
// break the invariants; and the S256 helper meets RFC 7636.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { sql, type Kysely } from "kysely";
import { createDb } from "../../kit/db.js";
import { outboxMigration } from "../../kit/events/index.js";
import { createLogger } from "../../kit/log.js";
import { runMigrations } from "../../kit/migrate.js";
import { createTestDatabase, type TestDatabase } from "../../kit/testing.js";
import { acceptCallback } from "../callback.js";
import { s256Challenge, verifierMatches, verifierProblem } from "../domain/pkce.js";
import { EDGES, FINAL_STATES, MOVES, type RequestState } from "../domain/states.js";
import { codeReceivedRow, codeRequestedRow } from "../events.js";
import { acknowledge, endOverdueRequests, getCodeRequest, insertCodeRequest, newCodeRequest, receiveInlineCode } from "../store/requests.js";
import { providerMigrations, type ProviderDB } from "../store/schema.js";

let testDb: TestDatabase;
let db: Kysely<ProviderDB>;

before(async () => {
  testDb = await createTestDatabase("provider_states");
  db = createDb<ProviderDB>({ url: testDb.url, schema: "provider", max: 20 });
  await runMigrations(db, { schema: "provider", log: createLogger("test", "silent"), migrations: { "0000_events": outboxMigration, ...providerMigrations } });
});
after(async () => {
  await db?.destroy();
  await testDb?.drop();
});

let n = 0;
async function newRequest(deadlineMs = 60_000) {
  const row = newCodeRequest({ userId: "u", phoneNumber: `+849090${String(n++).padStart(5, "0")}`, channel: "web", deadlineMs });
  await db.transaction().execute((trx) => insertCodeRequest(trx, row, codeRequestedRow(row)));
  return row;
}

const VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

async function eventsFor(id: string): Promise<number> {
  const rows = await db.selectFrom("outbox").select("payload").where("subject", "=", "provider.code_received").execute();
  return rows.filter((r) => Buffer.from(r.payload).includes(Buffer.from(id))).length;
}

describe("code request states", () => {
  test("the named moves follow the edges of the graph, and final states have none", () => {
    for (const [name, move] of Object.entries(MOVES)) {
      for (const from of move.from) for (const to of move.to) assert.ok(EDGES[from].includes(to), `${name}: ${from} → ${to} is an edge`);
    }
    for (const s of FINAL_STATES) assert.deepEqual(EDGES[s], []);
    const reachable = new Set<RequestState>(["pending"]);
    for (const s of reachable) for (const t of EDGES[s]) reachable.add(t);
    assert.equal(reachable.size, Object.keys(EDGES).length, "every state is reachable from pending");
  });

  test("an inline code and a verified callback racing on one acknowledged request: one wins, one code, one event", async () => {
    for (let round = 0; round < 25; round++) {
      const r = await newRequest();
      await acknowledge(db, r.id, CHALLENGE);
      const [inline, callback] = await Promise.all([
        (async () => {
          const received = { code: `INLINE-${round}`, status: "success" as const, at: new Date() };
          const announce = codeReceivedRow({ ...r, code: received.code, providerStatus: received.status, receivedAt: received.at });
          return Boolean(await receiveInlineCode(db, r.id, received, announce));
        })(),
        acceptCallback(db, r.id, { codeVerifier: VERIFIER, status: "SUCCESS", voucherCode: `CALLBACK-${round}` }),
      ]);
      const won = [inline, callback === "ACCEPTED"].filter(Boolean).length;
      assert.equal(won, 1, `round ${round}: exactly one winner (inline ${inline}, callback ${callback})`);
      if (!inline) assert.equal(callback, "ACCEPTED");
      else assert.equal(callback, "NOT_AWAITING_CALLBACK");
      const row = await db.selectFrom("code_requests").selectAll().where("id", "=", r.id).executeTakeFirstOrThrow();
      assert.equal(row.code, inline ? `INLINE-${round}` : `CALLBACK-${round}`);
      assert.equal(await eventsFor(r.id), 1);
    }
  });

  test("a callback racing the deadline sweep: the request is either delivered a code or expired, never both", async () => {
    const outcomes = new Set<string>();
    for (let round = 0; round < 25; round++) {
      const r = await newRequest(10);
      await acknowledge(db, r.id, CHALLENGE);
      await new Promise((res) => setTimeout(res, 15));
      const [callback] = await Promise.all([
        acceptCallback(db, r.id, { codeVerifier: VERIFIER, status: "LATE_SUCCESS", voucherCode: `LATE-${round}` }),
        endOverdueRequests(db, 100),
      ]);
      const row = await db.selectFrom("code_requests").selectAll().where("id", "=", r.id).executeTakeFirstOrThrow();
      outcomes.add(`${row.state}/${callback}`);
      if (row.state === "expired") {
        assert.equal(callback, "NOT_AWAITING_CALLBACK");
        assert.equal(row.code, null);
        assert.equal(await eventsFor(r.id), 0);
      } else {
        assert.deepEqual([row.state, callback, row.code], ["late_succeeded", "ACCEPTED", `LATE-${round}`]);
        assert.equal(await eventsFor(r.id), 1);
      }
    }
    assert.ok(outcomes.size >= 1);
  });

  test("replicas sweeping at once end each overdue request once", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 60; i++) {
      const r = await newRequest(1);
      if (i % 2) await acknowledge(db, r.id, CHALLENGE);
      ids.push(r.id);
    }
    await new Promise((res) => setTimeout(res, 10));
    const swept = (await Promise.all(Array.from({ length: 4 }, () => endOverdueRequests(db, 7)))).flat();
    const rest = await endOverdueRequests(db, 1_000);
    const all = [...swept, ...rest].filter((r) => ids.includes(r.id));
    assert.equal(all.length, ids.length, "each request ended once");
    assert.equal(new Set(all.map((r) => r.id)).size, ids.length);
    const states = await db.selectFrom("code_requests").select(["id", "state"]).where("id", "in", ids).execute();
    for (const s of states) assert.equal(s.state, ids.indexOf(s.id) % 2 ? "expired" : "failed");
  });

  test("a new request is stored exactly as newCodeRequest made it, so RequestCode's answer, made before the write, is the row", async () => {
    const made = await newRequest();
    assert.deepEqual(await getCodeRequest(db, made.id), made);
  });

  test("the table refuses a succeeding state without a code, an acknowledgement without a challenge, and an unknown state", async () => {
    const r = await newRequest();
    const attempts: [string, () => Promise<unknown>][] = [
      ["delivered without a code", () => db.updateTable("code_requests").set({ state: "delivered" }).where("id", "=", r.id).execute()],
      ["acknowledged without a challenge", () => db.updateTable("code_requests").set({ state: "acknowledged" }).where("id", "=", r.id).execute()],
      ["an unknown state", () => sql`UPDATE code_requests SET state = 'lost' WHERE id = ${r.id}`.execute(db)],
    ];
    for (const [what, attempt] of attempts) await assert.rejects(attempt(), /violates check constraint/, what);
  });
});

describe("PKCE S256", () => {
  test("the RFC 7636 appendix B vector", () => {
    assert.equal(s256Challenge(VERIFIER), CHALLENGE);
    assert.ok(verifierMatches(VERIFIER, CHALLENGE));
    assert.ok(!verifierMatches(VERIFIER.slice(0, -1) + "l", CHALLENGE));
    assert.ok(!verifierMatches(VERIFIER, CHALLENGE.slice(0, -1) + "N"));
  });

  test("verifiers are 43 to 128 characters of A-Z a-z 0-9 - . _ ~", () => {
    assert.equal(verifierProblem("a".repeat(42)), "VERIFIER_LENGTH");
    assert.equal(verifierProblem("a".repeat(43)), undefined);
    assert.equal(verifierProblem("a".repeat(128)), undefined);
    assert.equal(verifierProblem("a".repeat(129)), "VERIFIER_LENGTH");
    assert.equal(verifierProblem(`${"a".repeat(42)}-._~`), undefined);
    for (const bad of ["+", "/", "=", " ", "é", "%"]) assert.equal(verifierProblem(`${"a".repeat(43)}${bad}`), "VERIFIER_CHARSET", bad);
    // A malformed verifier never matches, even if its hash is the challenge.
    const short = "b".repeat(42);
    assert.ok(!verifierMatches(short, s256Challenge(short)));
  });
});
