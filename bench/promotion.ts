// Promotion benchmark: the first-login storm, through real logins.
//
// Auth, voucher and promotion run as their own processes (the edge tests' platform helper: a
// database, Redis prefix and JetStream stream of the bench's own, removed afterwards). The
// bench inserts 2 × BENCH_LOGINS (10,000) never-logged-in users straight into auth's `users`
// table (one argon2id hash, computed once, for all of them: registering them through the rpc
// would cost a hash each and minutes of set-up), then, from 32 concurrent gRPC clients:
//
//   1. no campaign, first half: BENCH_LOGINS / 2 first logins through AuthService.Login —
//      argon2id, the first-login conditional update, the session, the outbox event relayed to
//      JetStream and consumed by promotion (which finds no campaign);
//   2. a first-login campaign with a quota of 100 (BENCH_QUOTA) is created and activated;
//   3. the storm: BENCH_LOGINS first logins of other users, the same way, while promotion
//      takes slots and issues vouchers through the voucher service;
//   4. the campaign is ended, and no campaign, second half: BENCH_LOGINS / 2 more.
//
// The no-campaign baseline brackets the storm (half before, half after, rates combined) so
// that what drifts during a run — tables and indexes growing by 20,000 users' sessions and
// events, other work on a shared machine — weighs on both sides of the ratio alike; each
// half's own rate is printed too.
//
// Rows: the logins/s of both phases (p50/p95/p99 of the Login rpc, errors, RSS of the three
// services), the storm's ratio to the no-campaign phase (goal ≥ 0.9), the time from the last
// login's answer until all 100 vouchers are issued (goal ≤ 2 s), and whether exactly 100
// grants were made, each with its own voucher, all to users of the storm. Every login phase
// is bounded in time (BENCH_STORM_SECONDS, default 300) and in logins (BENCH_LOGINS); a phase
// cut short by the time bound says so in its `via` and a note.
//
//   npx tsx bench/promotion.ts     (BENCH_LOGINS=10000, BENCH_QUOTA=100; --quick: 1,000 logins)
import { createClient, type Client } from "@connectrpc/connect";
import { createServiceTransport } from "../services/kit/grpc-transport.js";
import pg from "pg";
import { AuthService } from "../gen/vouch/auth/v1/auth_pb.js";
import { PromotionService } from "../gen/vouch/promotion/v1/promotion_pb.js";
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { hashPassword } from "../services/auth/passwords.js";
import { ADMIN, startTestPlatform } from "../services/edge/test/platform.js";
import { newId } from "../services/kit/ids.js";
import { cpuMeter, cpuMsPer, isNats, isPostgres, load, mergeLoads, options, poll, report, row, sampleRss, sumCpu, type CpuSeconds, type LoadResult } from "./lib/harness.js";

const LOGINS = options.logins;
const QUOTA = Number(process.env.BENCH_QUOTA ?? 100);
const CLIENTS = 32;
const WARM_UP = 200;
const PHASE_SECONDS = Number(process.env.BENCH_STORM_SECONDS ?? 300);
const PASSWORD = "bench passphrase, long enough";
const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

const platform = await startTestPlatform("bench_storm", ["auth", "voucher", "promotion"], {
  all: { LOG_LEVEL: "warn" },
  // The bench measures logins, not the limiter: every login comes from 127.0.0.1.
  auth: { AUTH_LOGIN_IP_BURST: "1000000", AUTH_LOGIN_IP_PER_HOUR: "100000000", AUTH_LOGIN_IDENTIFIER_BURST: "1000", AUTH_LOGIN_IDENTIFIER_PER_HOUR: "100000" },
});
const pool = new pg.Pool({ connectionString: platform.env.DATABASE_URL, max: 2 });
try {
  const pids = [platform.pids.auth, platform.pids.voucher, platform.pids.promotion];
  // Every gRPC caller on one HTTP/2 connection (a grpc-js channel), as the edge calls auth.
  const authClient = createClient(AuthService, createServiceTransport({ baseUrl: platform.urls.auth! }));
  const admin = { headers: { authorization: `Bearer ${(await authClient.login({ identifier: ADMIN.username, password: ADMIN.password })).accessToken}` } };
  const promotion: Client<typeof PromotionService> = createClient(PromotionService, createServiceTransport({ baseUrl: platform.urls.promotion! }));
  const voucher: Client<typeof VoucherService> = createClient(VoucherService, createServiceTransport({ baseUrl: platform.urls.voucher! }));

  // Users who have never logged in, straight into auth's table.
  const hash = await hashPassword(PASSWORD);
  const stamp = Date.now().toString(36);
  const total = WARM_UP + 2 * LOGINS;
  const usernames = Array.from({ length: total }, (_, i) => `storm${stamp}u${i}`);
  for (let i = 0; i < total; i += 5_000) {
    const n = Math.min(5_000, total - i);
    const idx = Array.from({ length: n }, (_, k) => i + k);
    await pool.query(
      `INSERT INTO auth.users (id, full_name, username, username_key, email, phone_number, password_hash)
       SELECT id, 'Storm User', u, u, u || '@bench.example', p, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, u, p)`,
      [idx.map(() => newId()), idx.map((k) => usernames[k]), idx.map((k) => `+8490${String(1_000_000 + k).padStart(7, "0")}`), hash],
    );
  }
  const handled = async () => Number((await pool.query("SELECT count(*) AS n FROM promotion.inbox WHERE consumer = 'promotion-first-login'")).rows[0].n);
  /** First logins of `users`, CLIENTS at a time; each must be a first login. */
  const logins = (users: string[], seconds: number): Promise<LoadResult> =>
    load({ concurrency: CLIENTS, seconds, maxCalls: users.length }, async (w, i) => {
      const r = await authClient.login({ identifier: users[i], password: PASSWORD });
      if (!r.firstLogin) throw new Error(`${users[i]}: not a first login`);
    });
  const meter = cpuMeter({ auth: platform.pids.auth!, promotion: platform.pids.promotion!, voucher: platform.pids.voucher!, postgres: isPostgres, nats: isNats, bench: process.pid });
  const cpuNote = (cpu: CpuSeconds, n: number) => `CPU ms per login: ${cpuMsPer(cpu, n)}`;

  console.log(`first-login storm: ${fmt(LOGINS)} real first logins per phase (AuthService.Login, gRPC h2, ${CLIENTS} concurrent), quota ${QUOTA}`);
  const warm = await logins(usernames.slice(0, WARM_UP), 60);
  await poll("promotion to consume the warm-up logins", async () => (await handled()) >= warm.ok, 120_000, 100);

  const firstHalf = Math.floor(LOGINS / 2);
  const baselineUsers = [usernames.slice(WARM_UP, WARM_UP + firstHalf), usernames.slice(WARM_UP + firstHalf, WARM_UP + LOGINS)];
  const stormUsers = usernames.slice(WARM_UP + LOGINS);

  // 1. no campaign, first half
  let rss = sampleRss(pids);
  let cpu0 = meter.now();
  const before = await logins(baselineUsers[0], PHASE_SECONDS / 2);
  const beforeCpu = meter.since(cpu0);
  let baselineRss = rss.stop();
  // Every baseline event consumed before the campaign starts, so none of them can take a slot.
  await poll("promotion to consume the no-campaign logins", async () => (await handled()) >= warm.ok + before.ok, 300_000, 100);

  // 2. the campaign: 30 % off, its book generated by the voucher service
  const { campaign: created } = await promotion.createCampaign(
    {
      campaign: {
        name: `First ${QUOTA} users get 30%`,
        type: 1, // FIRST_LOGIN
        quota: QUOTA,
        voucherTerms: {
          discount: { kind: { case: "percentOff", value: { basisPoints: 3000, maxAmount: { minorUnits: 50_000n, currencyCode: "VND" } } } },
          minimumTopUpAmount: { minorUnits: 20_000n, currencyCode: "VND" },
          validityDays: 30,
          codePattern: "S-*{10}",
        },
      } as never,
    },
    admin,
  );
  await poll("the campaign's book to hold its codes", async () => (await voucher.getBook({ bookId: created!.bookId }, admin)).book!.codeCount >= BigInt(QUOTA), 120_000, 100);
  const campaign = (await promotion.activateCampaign({ campaignId: created!.id }, admin)).campaign!;

  // 3. the storm
  rss = sampleRss(pids);
  cpu0 = meter.now();
  const stormStarted = Date.now();
  const storm = await logins(stormUsers, PHASE_SECONDS);
  const lastLogin = Date.now();
  const stormCpu = meter.since(cpu0);
  const issued = async () => Number((await pool.query("SELECT count(*) FILTER (WHERE state = 'issued') AS n FROM promotion.grants WHERE campaign_id = $1", [campaign.id])).rows[0].n);
  await poll(`all ${QUOTA} grants to have their vouchers`, async () => (await issued()) >= QUOTA, 120_000, 10);
  const stormRss = rss.stop();
  await poll("promotion to consume the storm's logins", async () => (await handled()) >= warm.ok + before.ok + storm.ok, 300_000, 100);
  const consumedAll = Date.now();

  // 4. no campaign again, second half
  await promotion.endCampaign({ campaignId: campaign.id }, admin);
  rss = sampleRss(pids);
  cpu0 = meter.now();
  const afterward = await logins(baselineUsers[1], PHASE_SECONDS / 2);
  const afterCpu = meter.since(cpu0);
  baselineRss = Math.max(baselineRss, rss.stop());
  const baseline = mergeLoads([before, afterward]);
  const baselineCpu = sumCpu([beforeCpu, afterCpu]);

  const { rows: grants } = await pool.query(
    "SELECT g.voucher_id, g.state, g.issued_at, g.created_at, u.username FROM promotion.grants g LEFT JOIN auth.users u ON u.id = g.user_id WHERE g.campaign_id = $1",
    [campaign.id],
  );
  const granted = Number((await pool.query("SELECT granted FROM promotion.campaigns WHERE id = $1", [campaign.id])).rows[0].granted);
  const stormSet = new Set(stormUsers);
  const distinctVouchers = new Set(grants.map((g) => g.voucher_id).filter(Boolean)).size;
  const exact = grants.length === QUOTA && granted === QUOTA && distinctVouchers === QUOTA && grants.every((g) => g.state === "issued" && stormSet.has(g.username));
  const lastIssuedAt = Math.max(...grants.map((g) => (g.issued_at as Date).getTime()));
  const lastToAll = lastIssuedAt - lastLogin;
  const firstGrant = Math.min(...grants.map((g) => (g.created_at as Date).getTime()));
  const grantToVoucher = grants.map((g) => (g.issued_at as Date).getTime() - (g.created_at as Date).getTime()).sort((a, b) => a - b);

  const via = (r: LoadResult) => `${fmt(r.ok + r.errors)} first logins, AuthService.Login gRPC h2, ${CLIENTS} concurrent`;
  const cut = (r: LoadResult) => (r.ok + r.errors < LOGINS ? [`cut short by the ${PHASE_SECONDS} s time bound: ${fmt(r.ok + r.errors)} of ${fmt(LOGINS)} logins`] : []);
  report(
    row("storm.no-campaign", "first logins, no campaign", via(baseline), baseline, {
      unit: "logins/s",
      rssMiB: baselineRss,
      vs: "ceiling.argon2",
      notes: [
        ...cut(baseline),
        `half before the storm ${fmt(before.rate)} logins/s, half after it ${fmt(afterward.rate)} logins/s (the rate is the two combined)`,
        cpuNote(baselineCpu, baseline.ok),
        "RSS: auth + voucher + promotion",
      ],
    }),
  );
  report(
    row("storm", `first-login storm (quota ${QUOTA})`, via(storm), storm, {
      unit: "logins/s",
      rssMiB: stormRss,
      vs: "storm.no-campaign",
      goal: 0.9,
      targets: [
        {
          goal: `last login → all ${QUOTA} vouchers issued ≤ 2000 ms`,
          value: lastToAll <= 0 ? `0 ms (the ${QUOTA}th voucher was issued ${fmt(-lastToAll)} ms before the last login answered)` : `${fmt(lastToAll)} ms`,
          met: lastToAll <= 2000,
        },
        {
          goal: `exactly ${QUOTA} grants, each with its own voucher, all to storm users`,
          value: `${grants.length} grants, campaign counter ${granted}, ${distinctVouchers} distinct vouchers`,
          met: exact,
        },
      ],
      notes: [
        ...cut(storm),
        `storm start → first grant ${fmt(firstGrant - stormStarted)} ms, → all ${QUOTA} vouchers issued ${fmt(lastIssuedAt - stormStarted)} ms; grant → voucher p50 ${fmt(grantToVoucher[Math.floor(grantToVoucher.length / 2)])} ms, max ${fmt(grantToVoucher.at(-1)!)} ms`,
        `promotion had consumed every storm login ${fmt(consumedAll - lastLogin)} ms after the last one answered`,
        cpuNote(stormCpu, storm.ok),
      ],
    }),
  );
  if (!exact || baseline.errors || storm.errors) process.exitCode = 1;
} finally {
  await pool.end();
  await platform.stop();
}
process.exit(process.exitCode ?? 0);
