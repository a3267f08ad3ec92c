// Fault scenarios (issue 9): two replicas of every service as real processes against a
// private Postgres, Redis and NATS; load through both replicas; a fault mid-flow; then the
// invariants, checked in the database. Each scenario prints what it did and its counts.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { UserLoggedInSchema } from "../gen/vouch/events/v1/events_pb.js";
import { CampaignType, PromotionService } from "../gen/vouch/promotion/v1/promotion_pb.js";
import { runOp } from "./harness/history.js";
import { History, check, codeOf, failedChecks, report, type Check } from "./harness/history.js";
import { everyDeadLetterAccountedFor, everyOutboxEventPublished, providerInvariants, voucherInvariants } from "./harness/invariants.js";
import { newPhone, startPlatform, type Platform, type User } from "./harness/platform.js";
import { metricSum } from "./harness/cluster.js";
import { inParallel, waitFor, seconds } from "./harness/util.js";
import { assignChecks, assignVouchers, redeemCodes, redeemChecks, replayRedeems, requestCodes, requestIdsFor, type Assignment } from "./harness/workloads.js";
import { FINAL_PROVIDER_STATES } from "./harness/invariants.js";

const SOAK = process.env.VOUCH_SOAK === "1";
const scale = (ci: number, soak: number) => (SOAK ? soak : ci);

/** provider-sim: mostly inline codes, some by callback, a few late; duplicates on purpose. */
const SIM = {
  default: {
    latency: [
      { weight: 75, minMs: 5, maxMs: 200 },
      { weight: 20, minMs: 450, maxMs: 1_200 },
      { weight: 5, minMs: 1_600, maxMs: 2_200 },
    ],
    inlineWindowMs: 400,
    lateAfterMs: 1_500,
    duplicateCallbackRate: 0.1,
    callbackAfterInlineRate: 0.05,
  },
};

let p: Platform;
let customer: User;
let customerToken: string;
const started = Date.now();

/** Everything a scenario asserts, printed first so a failure still shows the whole picture. */
function conclude(title: string, did: string[], h: History | undefined, checks: Check[]) {
  report(title, did, h, checks);
  assert.equal(failedChecks(checks), "", `${title}: invariants failed`);
  assert.deepEqual(p.cluster.unexpectedExits(), [], "no replica may crash on its own");
}

/** Users and assignments for a redeem scenario. */
async function assignedCodes(h: History, bookId: string, users: number, perUser: number, onProgress?: (n: number) => void) {
  const userIds = Array.from({ length: users }, (_, i) => `rel-user-${bookId.slice(-6)}-${i}`);
  const assigned = await assignVouchers(p, h, { bookId, users: userIds, perUser, onProgress });
  const codes = assigned.filter((a): a is Assignment & { code: string } => a.outcome === "ok" && !!a.code).map((a) => ({ code: a.code, userId: a.userId }));
  return { assigned, codes, owners: new Map(codes.map((c) => [c.code, c.userId])) };
}

describe("reliability: faults against two replicas of everything", { timeout: 15 * 60_000 }, () => {
  before(async () => {
    p = await startPlatform({
      sim: SIM,
      env: {
        AUTH_REGISTER_IP_BURST: "100000",
        AUTH_REGISTER_IP_PER_HOUR: "1000000",
        AUTH_LOGIN_IP_BURST: "100000",
        AUTH_LOGIN_IP_PER_HOUR: "1000000",
        PROVIDER_REQUESTS_PER_USER_PER_MINUTE: "0",
        PROVIDER_REQUESTS_PER_PHONE_PER_MINUTE: "0",
        PROVIDER_CALL_TIMEOUT_MS: "1500",
        PROVIDER_REQUEST_DEADLINE_MS: "40000",
        PROVIDER_SWEEP_INTERVAL_MS: "300",
        PROVIDER_RETRY_BACKOFF_MS: "200,500,1000,2000",
        PROVIDER_BREAKER_RESET_MS: "2000",
      },
    });
    customer = await p.register("relcust");
    customerToken = (await p.login(customer)).accessToken;
    console.log(`reliability: platform up in ${seconds(Date.now() - started)} (private postgres :${p.pg.port}, redis :${p.redis.port}, nats :${p.nats.port})`);
  });

  after(async () => {
    if (p) {
      const crashed = p.cluster.unexpectedExits();
      if (crashed.length) for (const r of Object.values(p.cluster.replicas).flat()) console.log(`--- ${r.name} log tail\n${r.logTail(30)}`);
      await p.dispose();
    }
    console.log(`reliability: faults file took ${seconds(Date.now() - started)}`);
  });

  test("kill -9 a voucher replica mid-flow, then restart it: nothing lost, nothing doubled", async () => {
    const h = new History();
    const uses = 2;
    const users = scale(40, 200);
    const { bookId } = await p.createActiveBook({ codes: users * 3 + 50, usesPerCode: uses, prefix: "KV" });
    const [a, b] = p.cluster.replicas.voucher;
    let restartA: Promise<void> | undefined;
    const { assigned, codes, owners } = await assignedCodes(h, bookId, users, 3, (done) => {
      if (done === Math.floor(users * 3 * 0.3)) restartA ??= a.kill().then(() => a.start());
    });
    await restartA;

    let restartB: Promise<void> | undefined;
    const redeems = await redeemCodes(p, h, {
      codes,
      perCode: 3,
      orderPrefix: "kv-",
      onProgress: (done) => {
        if (done === Math.floor(codes.length * 3 * 0.3)) restartB ??= b.kill().then(() => b.start());
      },
    });
    await restartB;
    const replay = await replayRedeems(p, h, redeems, owners);
    const checks = [
      ...(await assignChecks(p, bookId, assigned)),
      ...(await redeemChecks(p, redeems, "kv-", uses)),
      replay,
      ...(await voucherInvariants(p.sql)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("kill -9 voucher replica during assigns and redeems", [
      `${users * 3} assigns and ${codes.length * 3} competing redeems (3 per code, ${uses} uses each) through 2 voucher replicas`,
      `kill -9 voucher-a at 30% of the assigns, voucher-b at 30% of the redeems; each restarted at once on its port`,
    ], h, checks);
  });

  test("first-login storm with promotion and auth replicas killed: exactly quota grants, one voucher each", async () => {
    const h = new History();
    const quota = scale(25, 200);
    const demand = scale(60, 500);
    const campaignId = await activeFirstLoginCampaign(quota, "FL");

    const users = await inParallel(Array.from({ length: demand }), 4, () => p.register("relstorm"));
    const [promoA, promoB] = p.cluster.replicas.promotion;
    const authB = p.cluster.replicas.auth[1];
    const faults: Promise<void>[] = [];
    let done = 0;
    const logins = await inParallel(users, 12, async (u, i) => {
      const r = await runOp(h, "first login", (attempt, timeoutMs) => p.auth(i + attempt).login({ identifier: u.username, password: u.password }, { timeoutMs }));
      done++;
      if (done === Math.floor(demand * 0.3)) faults.push(promoA.kill().then(() => promoA.start()));
      if (done === Math.floor(demand * 0.5)) faults.push(authB.kill().then(() => authB.start()));
      if (done === Math.floor(demand * 0.7)) faults.push(promoB.kill().then(() => promoB.start()));
      return r;
    });
    await Promise.all(faults);

    const firstLogins = async () => {
      const events = await p.sql.query("SELECT payload FROM auth.outbox WHERE subject = 'auth.user_logged_in'");
      return events.rows.map((e) => fromBinary(UserLoggedInSchema, e.payload)).filter((e) => e.firstLogin);
    };
    // Every first-login event handled by promotion, and every grant issued.
    await waitFor("every first-login event handled and every grant issued", async () => {
      const handled = await p.sql.query("SELECT count(*) AS n FROM promotion.inbox WHERE consumer = 'promotion-first-login'");
      const pending = await p.sql.query("SELECT count(*) FILTER (WHERE state <> 'issued') AS n FROM promotion.grants WHERE campaign_id = $1", [campaignId]);
      return Number(handled.rows[0].n) >= (await firstLogins()).length && Number(pending.rows[0].n) === 0;
    }, 180_000, 250).catch(() => {});

    const ids = new Set(users.map((u) => u.id));
    const firsts = (await firstLogins()).filter((e) => ids.has(e.userId));
    const perUser = new Map<string, number>();
    for (const e of firsts) perUser.set(e.userId, (perUser.get(e.userId) ?? 0) + 1);
    const okUsers = users.filter((_, i) => logins[i].outcome === "ok").map((u) => u.id);
    const checks = [
      check("each user's first login recorded once", okUsers.every((u) => perUser.get(u) === 1) && [...perUser.values()].every((n) => n === 1),
        `${okUsers.length} ok logins, ${perUser.size} first-login events, ${[...perUser.values()].filter((n) => n > 1).length} users with two`),
      ...(await grantChecks(campaignId, quota, ids)),
      ...(await voucherInvariants(p.sql)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("first-login storm", [
      `campaign quota ${quota}; ${demand} new users log in at once through 2 auth replicas (12 at a time)`,
      `kill -9 promotion-a at 30% of the logins, auth-b at 50%, promotion-b at 70%; each restarted at once`,
    ], h, checks);
  });

  test("restart Postgres during redeems: in-flight calls fail UNAVAILABLE or ABORTED, retries succeed once", async () => {
    const h = new History();
    const uses = 1;
    const users = scale(40, 200);
    const { bookId } = await p.createActiveBook({ codes: users * 2 + 20, usesPerCode: uses, prefix: "PG" });
    const { assigned, codes, owners } = await assignedCodes(h, bookId, users, 2);
    let restart: Promise<void> | undefined;
    let outageMs = 0;
    const redeems = await redeemCodes(p, h, {
      codes,
      perCode: 2,
      orderPrefix: "pg-",
      onProgress: (done) => {
        if (done === Math.floor(codes.length * 2 * 0.3)) {
          const t = Date.now();
          restart ??= p.pg.restart("immediate").then(() => void (outageMs = Date.now() - t));
        }
      },
    });
    await restart;
    const replay = await replayRedeems(p, h, redeems, owners);
    const seen = [...h.codes.keys()].filter((k) => k.startsWith("redeem:")).map((k) => k.slice("redeem: ".length));
    const unexpected = seen.filter((c) => !["Unavailable", "Aborted", "FailedPrecondition"].includes(c));
    const checks = [
      check("uncertain calls were only UNAVAILABLE or ABORTED", unexpected.length === 0, `codes seen: ${seen.join(", ") || "none"}`),
      check("the outage was felt", h.count("redeem", "unknown", "attempts") > 0, `${h.count("redeem", "unknown", "attempts")} calls failed during a ${outageMs} ms outage`),
      ...(await assignChecks(p, bookId, assigned)),
      ...(await redeemChecks(p, redeems, "pg-", uses)),
      replay,
      ...(await voucherInvariants(p.sql)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("Postgres restarted (crash: pg_ctl -m immediate) during redeems", [
      `${codes.length * 2} competing redeems (2 per single-use code) through 2 voucher replicas`,
      `Postgres killed (immediate shutdown, WAL replay on start) at 30% and started again: down ${outageMs} ms`,
    ], h, checks);
  });

  /** Waits until every request of `ids` is in a final state (or the time is up; the checks then say which). */
  async function settle(ids: string[], timeoutMs: number) {
    const t = Date.now();
    await waitFor(`${ids.length} code requests to reach a final state`, async () => {
      const r = await p.sql.query("SELECT count(*) AS n FROM provider.code_requests WHERE id = ANY($1) AND state = ANY($2)", [ids, FINAL_PROVIDER_STATES]);
      return Number(r.rows[0].n) === ids.length;
    }, timeoutMs, 250).catch(() => {});
    return Date.now() - t;
  }

  /** The stored purchased codes catch up with the codes bought (the voucher consumer is asynchronous). */
  async function purchasesSettled(ids: string[], timeoutMs = 60_000) {
    await waitFor("every bought code to be stored by voucher", async () => {
      const r = await p.sql.query(`SELECT count(*) FILTER (WHERE r.code IS NOT NULL) AS bought, count(pc.id) AS stored
        FROM provider.code_requests r LEFT JOIN voucher.purchased_codes pc ON pc.code_request_id = r.id WHERE r.id = ANY($1)`, [ids]);
      return Number(r.rows[0].bought) === Number(r.rows[0].stored);
    }, timeoutMs, 250).catch(() => {});
  }

  test("restart NATS during 500 provider requests: every request ends once, every code stored once", async () => {
    const h = new History();
    const total = scale(500, 2_000);
    let stopping: Promise<void> | undefined;
    let starting: Promise<void> | undefined;
    let down = 0;
    let outageMs = 0;
    const ops = await requestCodes(p, h, {
      count: total,
      token: customerToken,
      onProgress: (done) => {
        if (done === Math.floor(total * 0.3)) stopping ??= p.nats.stop().then(() => void (down = Date.now()));
        if (done === Math.floor(total * 0.7)) starting ??= (stopping ?? Promise.resolve()).then(() => p.nats.start()).then(() => void (outageMs = Date.now() - down));
      },
    });
    await stopping;
    await (starting ??= p.nats.start());
    const recorded = await requestIdsFor(p, ops);
    const settleMs = await settle(recorded.ids, 120_000);
    await purchasesSettled(recorded.ids);
    const checks = [
      recorded,
      ...(await providerInvariants(p.sql, recorded.ids)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("NATS restarted during provider requests", [
      `${total} RequestCode calls (WEB and SMS) through 2 provider replicas; provider-sim answers inline, by callback and late, with duplicate callbacks`,
      `NATS stopped at 30% of the calls and started again at 70%: down ${outageMs} ms; all requests final ${seconds(settleMs)} after the load`,
    ], h, checks);
  });

  test("kill -9 a provider replica mid-flow, then restart it: one final state per request", async () => {
    const h = new History();
    const total = scale(120, 600);
    const [a] = p.cluster.replicas.provider;
    let restart: Promise<void> | undefined;
    const ops = await requestCodes(p, h, {
      count: total,
      token: customerToken,
      onProgress: (done) => {
        if (done === Math.floor(total * 0.4)) restart ??= a.kill().then(() => a.start());
      },
    });
    await restart;
    const recorded = await requestIdsFor(p, ops);
    // Events the killed replica held come back after their ack wait (30 s).
    const settleMs = await settle(recorded.ids, 120_000);
    await purchasesSettled(recorded.ids);
    const checks = [
      recorded,
      ...(await providerInvariants(p.sql, recorded.ids)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("kill -9 provider replica during requests", [
      `${total} RequestCode calls through 2 provider replicas`,
      `kill -9 provider-a at 40% of the calls (its worker events in flight, its callbacks unanswered) and restarted; all final ${seconds(settleMs)} after the load`,
    ], h, checks);
  });

  test("Redis flushed, then down: no voucher, grant or redemption lost; login throttling falls back to a local limit", async () => {
    const h = new History();
    const users = scale(30, 150);
    const { bookId } = await p.createActiveBook({ codes: users * 2 + 20, usesPerCode: 1, prefix: "RD" });
    let flushed: Promise<void> | undefined;
    const { assigned, codes } = await assignedCodes(h, bookId, users, 2, (done) => {
      if (done === users) flushed ??= p.redis.flush();
    });
    await flushed;

    const victim = await p.register("relvictim");
    const bystander = await p.register("relbystander");
    // Grants while Redis is down: a campaign smaller than the first logins made meanwhile.
    const grantQuota = 3;
    const campaignId = await activeFirstLoginCampaign(grantQuota, "RG");
    const newcomers = await inParallel(Array.from({ length: 6 }), 3, () => p.register("relredis"));
    await p.redis.kill();
    // While Redis is down: the first half of the redeems, and a password-guessing run on one
    // identifier against one auth replica.
    const half = Math.floor(codes.length / 2);
    const firstHalf = await redeemCodes(p, h, { codes: codes.slice(0, half), perCode: 1, orderPrefix: "rd-" });
    let wrongAllowed = 0;
    let refused = 0;
    let other = 0;
    for (let i = 0; i < 12; i++) {
      try {
        await p.auth(0).login({ identifier: victim.username, password: "not the password at all" });
        other++;
      } catch (err) {
        const code = codeOf(err);
        if (code === Code.Unauthenticated) wrongAllowed++;
        else if (code === Code.ResourceExhausted) refused++;
        else other++;
      }
    }
    const bystanderWhileDown = await p.login(bystander, 0).then(() => true, () => false);
    // The newcomers' first logins on the other auth replica (auth-a's local fallback budget
    // for this address went to the guessing run above).
    const newcomerLogins = await inParallel(newcomers, 3, (u) => runOp(h, "first login", (attempt, timeoutMs) => p.auth(1).login({ identifier: u.username, password: u.password }, { timeoutMs })));
    await p.redis.start();
    const secondHalf = await redeemCodes(p, h, { codes: codes.slice(half), perCode: 1, orderPrefix: "rd-" });
    const redeems = [...firstHalf, ...secondHalf];
    const demand = new Set([bystander.id, ...newcomers.map((u) => u.id)]);
    await waitFor("the grants made while Redis was down to be issued", async () => {
      const r = await p.sql.query("SELECT count(*) FILTER (WHERE state = 'issued')::int AS n FROM promotion.grants WHERE campaign_id = $1", [campaignId]);
      return r.rows[0].n === grantQuota;
    }, 60_000, 250).catch(() => undefined); // the checks below say what is missing
    const checks = [
      check("first logins succeed while Redis is down", newcomerLogins.every((r) => r.outcome === "ok"), `${newcomerLogins.filter((r) => r.outcome === "ok").length} of ${newcomerLogins.length} ok on auth-b`),
      ...(await grantChecks(campaignId, grantQuota, demand)),
      check("while Redis is down, login attempts on one identifier are limited locally (fallback burst 5 of 10)", wrongAllowed >= 1 && wrongAllowed <= 5 && refused === 12 - wrongAllowed && other === 0,
        `12 wrong passwords on auth-a: ${wrongAllowed} checked, ${refused} refused RESOURCE_EXHAUSTED, ${other} other`),
      check("an untargeted account logs in while Redis is down", bystanderWhileDown, bystanderWhileDown ? "bystander logged in on auth-a" : "bystander refused"),
      ...(await assignChecks(p, bookId, assigned)),
      ...(await redeemChecks(p, redeems, "rd-", 1)),
      check("every redeem succeeded with Redis flushed or down", redeems.every((r) => r.outcome === "ok"), `${redeems.filter((r) => r.outcome === "ok").length} of ${redeems.length} ok`),
      ...(await voucherInvariants(p.sql)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("Redis flushed, then killed, then back", [
      `${users * 2} assigns with FLUSHALL at 50%; Redis killed; ${half} redeems, 12 wrong-password logins and ${newcomers.length + 1} first logins (campaign quota ${grantQuota}) while down; Redis restarted empty; ${codes.length - half} more redeems`,
    ], h, checks);
  });

  test("the provider stalls: the breaker opens, requests wait, each ends in one final state", async () => {
    const h = new History();
    const stalled = Array.from({ length: scale(20, 100) }, () => newPhone());
    const normal = Array.from({ length: scale(20, 100) }, () => newPhone());
    await configureSim({ ...SIM, byPhoneNumber: Object.fromEntries(stalled.map((ph) => [ph, { stallRate: 1 }])) });
    const ops = await requestCodes(p, h, { count: stalled.length + normal.length, token: customerToken, phones: interleave(stalled, normal), concurrency: 8 });
    const opened = await waitFor("a provider breaker to open", async () => metricSum(await p.cluster.metrics("provider"), "vouch_provider_breaker_transitions_total", { state: "open" }) > 0, 60_000, 250).then(() => true, () => false);
    await configureSim(SIM);
    const recorded = await requestIdsFor(p, ops);
    const settleMs = await settle(recorded.ids, 120_000);
    await purchasesSettled(recorded.ids);
    const states = await p.sql.query("SELECT phone_number = ANY($2) AS stalled, state, count(*) AS n FROM provider.code_requests WHERE id = ANY($1) GROUP BY 1, 2 ORDER BY 1, 2", [recorded.ids, stalled]);
    const checks = [
      check("the breaker opened while the provider stalled", opened, opened ? "vouch_provider_breaker_transitions_total{state=open} > 0" : "never opened"),
      recorded,
      ...(await providerInvariants(p.sql, recorded.ids)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("provider stalling", [
      `${stalled.length} requests to numbers the provider never answers, ${normal.length} to numbers it answers; stall lifted once a breaker opened`,
      `outcomes: ${states.rows.map((r) => `${r.stalled ? "stalled" : "normal"} ${r.state} ${r.n}`).join(", ")}; all final ${seconds(settleMs)} after the load`,
    ], h, checks);
  });

  test("a slow consumer: voucher's purchased-code store blocked, deliveries wait for it and catch up, nothing lost or doubled", async () => {
    const h = new History();
    const lock = await p.sql.connect();
    let ids: string[] = [];
    let heldBack = 0;
    try {
      await lock.query("BEGIN");
      await lock.query("LOCK TABLE voucher.purchased_codes IN SHARE ROW EXCLUSIVE MODE");
      const ops = await requestCodes(p, h, { count: scale(40, 200), token: customerToken });
      const recorded = await requestIdsFor(p, ops);
      ids = recorded.ids;
      // The provider has the codes, but delivers none until the voucher service stored it.
      await waitFor("half the requests to have their code while voucher's consumer is blocked", async () => {
        const r = await p.sql.query("SELECT count(*) AS n FROM provider.code_requests WHERE id = ANY($1) AND code IS NOT NULL", [ids]);
        return Number(r.rows[0].n) >= Math.floor(ids.length / 2);
      }, 60_000, 250);
      const waiting = await p.sql.query("SELECT count(*) AS n FROM pg_locks WHERE NOT granted AND relation = 'voucher.purchased_codes'::regclass");
      assert.ok(Number(waiting.rows[0].n) > 0, "the consumer is blocked on the lock");
      const r = await p.sql.query("SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered, count(*) FILTER (WHERE code IS NOT NULL) AS with_code FROM provider.code_requests WHERE id = ANY($1)", [ids]);
      assert.equal(Number(r.rows[0].delivered), 0, "nothing delivered before it is stored");
      heldBack = Number(r.rows[0].with_code);
    } finally {
      await lock.query("COMMIT").catch(() => {});
      lock.release();
    }
    const settleMs = await settle(ids, 90_000);
    await purchasesSettled(ids);
    const checks = [
      ...(await providerInvariants(p.sql, ids)),
      await everyOutboxEventPublished(p.sql),
      await everyDeadLetterAccountedFor(p.sql),
    ];
    conclude("slow consumer", [
      `${ids.length} code requests while voucher.purchased_codes was locked (voucher's code_received consumer stuck in its insert on both replicas)`,
      `${heldBack} codes received and held back, none delivered while locked; lock released, all final ${seconds(settleMs)} later`,
    ], h, checks);
  });

  test("soak: random faults, round after round, while assigns, redeems and code requests run", { skip: SOAK ? false : "set VOUCH_SOAK=1 (VOUCH_SOAK_MINUTES, default 10)" }, async () => {
    const minutes = Number(process.env.VOUCH_SOAK_MINUTES ?? 10);
    const end = Date.now() + minutes * 60_000;
    const h = new History();
    const r = p.cluster.replicas;
    const faults: [string, () => Promise<unknown>][] = [
      ...(["voucher", "provider", "promotion", "auth"] as const).flatMap((k) => r[k].map((x) => [`kill -9 ${x.name}`, () => x.kill().then(() => x.start())] as [string, () => Promise<unknown>])),
      ["restart Postgres (fast)", () => p.pg.restart("fast")],
      ["restart Postgres (immediate)", () => p.pg.restart("immediate")],
      ["restart NATS", () => p.nats.stop().then(() => p.nats.start())],
      ["flush Redis", () => p.redis.flush()],
      ["kill Redis, start it again", () => p.redis.kill().then(() => p.redis.start())],
    ];
    const did: string[] = [];
    const checks: Check[] = [];
    for (let round = 1; Date.now() < end; round++) {
      const [name, inject] = faults[Math.floor(Math.random() * faults.length)];
      const { bookId } = await p.createActiveBook({ codes: 260, usesPerCode: 2, prefix: `S${round % 10}` });
      let fault: Promise<unknown> | undefined;
      const [assigns, requests] = await Promise.all([
        assignedCodes(h, bookId, 40, 2, (done) => {
          if (done === 24) fault ??= inject();
        }),
        requestCodes(p, h, { count: 60, token: customerToken, concurrency: 8 }),
      ]);
      await fault;
      const redeems = await redeemCodes(p, h, { codes: assigns.codes, perCode: 3, orderPrefix: `s${round}-` });
      const recorded = await requestIdsFor(p, requests);
      await settle(recorded.ids, 120_000);
      await purchasesSettled(recorded.ids);
      const roundChecks = [
        ...(await assignChecks(p, bookId, assigns.assigned)),
        ...(await redeemChecks(p, redeems, `s${round}-`, 2)),
        recorded,
        ...(await providerInvariants(p.sql, recorded.ids)),
        ...(await voucherInvariants(p.sql)),
      ];
      const bad = roundChecks.filter((c) => !c.ok);
      did.push(`round ${round}: ${name} — ${bad.length ? `FAILED ${bad.map((c) => c.name).join("; ")}` : `${roundChecks.length} checks ok`}`);
      checks.push(...bad);
    }
    checks.push(await everyOutboxEventPublished(p.sql), await everyDeadLetterAccountedFor(p.sql));
    if (checks.length === 2) checks.unshift(check("every round's invariants held", true, `${did.length} rounds`));
    conclude(`soak (${minutes} min)`, did, h, checks);
  });
});

function interleave<T>(a: T[], b: T[]): T[] {
  return a.flatMap((x, i) => (i < b.length ? [x, b[i]] : [x])).concat(b.slice(a.length));
}

/** A FIRST_LOGIN campaign of `quota` slots, active once its book holds the codes. */
async function activeFirstLoginCampaign(quota: number, prefix: string): Promise<string> {
  const admin = await p.admin();
  const promo = p.cluster.client(PromotionService, p.cluster.replicas.promotion[0]);
  const { campaign } = await promo.createCampaign({
    campaign: {
      name: `reliability first login ${prefix}`,
      type: CampaignType.FIRST_LOGIN,
      quota,
      voucherTerms: {
        discount: { kind: { case: "percentOff", value: { basisPoints: 3000, maxAmount: { minorUnits: 50_000n, currencyCode: "VND" } } } },
        validityDays: 30,
        codePattern: `${prefix}-*{10}`,
      },
    },
    requestId: randomUUID(),
  }, admin);
  await waitFor("the campaign's book to hold its codes", async () => (await p.voucher(0).getBook({ bookId: campaign!.bookId }, admin)).book!.codeCount >= BigInt(quota), 120_000, 250);
  await promo.activateCampaign({ campaignId: campaign!.id }, admin);
  return campaign!.id;
}

/** Grants = quota when demand (these users) exceeded it, one per user, each with exactly one voucher of its user's. */
async function grantChecks(campaignId: string, quota: number, userIds: Set<string>): Promise<Check[]> {
  const grants = await p.sql.query(`
    SELECT g.id, g.user_id, g.state, g.voucher_id, count(c.id) AS vouchers, bool_and(c.owner_user_id = g.user_id) AS owned, bool_and(c.id = g.voucher_id) AS same
      FROM promotion.grants g LEFT JOIN voucher.codes c ON c.grant_id = g.id
     WHERE g.campaign_id = $1 GROUP BY g.id`, [campaignId]);
  const counter = await p.sql.query("SELECT granted FROM promotion.campaigns WHERE id = $1", [campaignId]);
  const g = grants.rows;
  return [
    check("grants = quota when demand exceeds it", g.length === quota && counter.rows[0].granted === quota,
      `demand ${userIds.size}, quota ${quota}: ${g.length} grants, campaign counter ${counter.rows[0].granted}`),
    check("one grant per user", new Set(g.map((r) => r.user_id)).size === g.length && g.every((r) => userIds.has(r.user_id)), `${new Set(g.map((r) => r.user_id)).size} distinct users of our ${userIds.size}`),
    check("every grant has exactly one voucher, its user's", g.every((r) => r.state === "issued" && Number(r.vouchers) === 1 && r.owned && r.same),
      `${g.filter((r) => r.state === "issued").length} issued, ${g.filter((r) => Number(r.vouchers) === 1).length} with exactly one voucher, ${g.filter((r) => Number(r.vouchers) > 1).length} with more`),
  ];
}

async function configureSim(config: unknown) {
  const res = await fetch(`${p.cluster.sim!.url}/sim/config`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(config) });
  assert.equal(res.status, 200, await res.text());
}
