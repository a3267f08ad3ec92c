// Promotion benchmark: the first-login storm.
//
//   10,000 first logins (user_logged_in events, published as auth's outbox relay does)
//   against one first-login campaign with a quota of 100, on one promotion replica, with
//   real auth (service token) and voucher (IssueVoucher) services in-process.
//
// It prints, from one run:
//   - logins handled per second with no campaign running, and with the campaign (its ratio:
//     goal ≥ 0.9: a campaign must not slow first logins down), each with p50/p95/p99 of the
//     time from publish to the login's transaction;
//   - the raw Postgres ceiling of the same work in the same run: C connections each looping
//     BEGIN; INSERT inbox row; UPDATE … SET granted = granted + 1 WHERE granted < quota
//     RETURNING; INSERT grant when a slot was taken; COMMIT — and the ratio to it;
//   - the time from the last login to "all 100 grants have vouchers" (goal ≤ 2 s);
//   - that exactly 100 grants were made, with 100 distinct vouchers.
//
// Everything runs against the local Postgres, Redis and NATS in a database, stream and
// Redis prefix of the bench's own, removed at the end. Run: `npx tsx bench/promotion.ts`
// (BENCH_LOGINS=10000, BENCH_QUOTA=100).
import { sql } from "kysely";
import pg from "pg";
import { newId } from "../services/kit/ids.js";
import { startHarness, type Harness } from "../services/promotion/test/harness.js";
import { latencyStats, options, report } from "./lib/harness.js";

const LOGINS = options.logins;
const QUOTA = Number(process.env.BENCH_QUOTA ?? 100);
const PUBLISH_WINDOW = 500;

const pct = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);
const fmt = (n: number, digits = 0) => n.toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });

async function poll(what: string, probe: () => Promise<boolean>, timeoutMs = 300_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Publishes `users`' first logins; returns each event's publish time (ms) by event id. */
async function storm(h: Harness, users: string[]): Promise<Map<string, number>> {
  const sent = new Map<string, number>();
  for (let i = 0; i < users.length; i += PUBLISH_WINDOW) {
    await Promise.all(
      users.slice(i, i + PUBLISH_WINDOW).map(async (u) => {
        const eventId = newId();
        sent.set(eventId, Date.now());
        await h.publishLogin(u, { eventId });
      }),
    );
  }
  return sent;
}

/** Waits until every event is handled; returns logins/s (first publish → last handled) and latencies. */
async function measure(h: Harness, users: string[]) {
  const db = h.promotion.platform.db;
  const started = Date.now();
  const sent = await storm(h, users);
  const lastPublished = Date.now();
  const ids = [...sent.keys()];
  const countHandled = async () => {
    const r = await db.selectFrom("inbox").select(sql<number>`count(*)::int`.as("n")).where("consumer", "=", "promotion-first-login").where("event_id", "in", ids).executeTakeFirstOrThrow();
    return r.n;
  };
  await poll("every login handled", async () => (await countHandled()) === ids.length);
  const rows = await db.selectFrom("inbox").select(["event_id", "processed_at"]).where("consumer", "=", "promotion-first-login").where("event_id", "in", ids).execute();
  const lastHandled = Math.max(...rows.map((r) => r.processed_at.getTime()));
  const latencies = rows.map((r) => r.processed_at.getTime() - sent.get(r.event_id)!).sort((a, b) => a - b);
  return { perSecond: (ids.length / Math.max(1, lastHandled - started)) * 1000, latencies, lastPublished };
}

async function rawCeiling(url: string, concurrency: number, ops: number): Promise<number> {
  const pool = new pg.Pool({ connectionString: url, max: concurrency });
  try {
    await pool.query(`CREATE SCHEMA IF NOT EXISTS bench_raw;
      CREATE TABLE bench_raw.campaigns (id int PRIMARY KEY, granted int NOT NULL, quota int NOT NULL, CHECK (granted <= quota));
      CREATE TABLE bench_raw.inbox (event_id text PRIMARY KEY);
      CREATE TABLE bench_raw.grants (id text PRIMARY KEY, campaign_id int NOT NULL, user_id text NOT NULL, UNIQUE (campaign_id, user_id));
      INSERT INTO bench_raw.campaigns VALUES (1, 0, ${QUOTA});`);
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        const client = await pool.connect();
        try {
          while (next < ops) {
            next++;
            const user = newId();
            await client.query("BEGIN");
            await client.query("INSERT INTO bench_raw.inbox VALUES ($1)", [newId()]);
            const slot = await client.query("UPDATE bench_raw.campaigns SET granted = granted + 1 WHERE id = 1 AND granted < quota RETURNING id");
            if (slot.rowCount) await client.query("INSERT INTO bench_raw.grants VALUES ($1, 1, $2)", [newId(), user]);
            await client.query("COMMIT");
          }
        } finally {
          client.release();
        }
      }),
    );
    return (ops / (performance.now() - started)) * 1000;
  } finally {
    await pool.query("DROP SCHEMA bench_raw CASCADE").catch(() => {});
    await pool.end();
  }
}

async function main() {
  const h = await startHarness("bench", {
    tune: (s) => {
      s.grantConcurrency = Number(process.env.PROMOTION_GRANT_CONCURRENCY ?? 8);
      s.issueConcurrency = Number(process.env.PROMOTION_ISSUE_CONCURRENCY ?? 8);
      s.reconcileAfterMs = 10_000;
      s.sweepIntervalMs = 1_000;
    },
  });
  try {
    const concurrency = h.settings.grantConcurrency;
    console.log(`promotion first-login storm: ${fmt(LOGINS)} first logins, quota ${QUOTA}, consumer concurrency ${concurrency}`);
    // Warm-up: connections, the service token, the consumer.
    await measure(h, Array.from({ length: 200 }, () => newId()));

    const baseline = await measure(h, Array.from({ length: LOGINS }, () => newId()));
    const campaign = await h.activeCampaign({ quota: QUOTA });
    const withCampaign = await measure(h, Array.from({ length: LOGINS }, () => newId()));
    const db = h.promotion.platform.db;
    await poll("every grant to have its voucher", async () => {
      const r = await db.selectFrom("grants").select(sql<number>`count(*) FILTER (WHERE state = 'issued')::int`.as("n")).where("campaign_id", "=", campaign.id).executeTakeFirstOrThrow();
      return r.n === QUOTA;
    });
    const lastIssue = await db.selectFrom("grants").select(sql<Date>`max(issued_at)`.as("t")).where("campaign_id", "=", campaign.id).executeTakeFirstOrThrow();
    const grants = await db.selectFrom("grants").select(["voucher_id"]).where("campaign_id", "=", campaign.id).execute();
    const granted = (await db.selectFrom("campaigns").select("granted").where("id", "=", campaign.id).executeTakeFirstOrThrow()).granted;
    const issueLag = await db
      .selectFrom("grants")
      .select(sql<number>`extract(epoch from issued_at - created_at) * 1000`.as("ms"))
      .where("campaign_id", "=", campaign.id)
      .execute();
    const issueMs = issueLag.map((r) => Number(r.ms)).sort((a, b) => a - b);

    const raw = await rawCeiling(h.testDb.url, concurrency, LOGINS);

    const line = (label: string, m: { perSecond: number; latencies: number[] }) =>
      console.log(`  ${label.padEnd(22)} ${fmt(m.perSecond).padStart(7)} logins/s   publish→handled p50 ${fmt(pct(m.latencies, 50))} ms  p95 ${fmt(pct(m.latencies, 95))} ms  p99 ${fmt(pct(m.latencies, 99))} ms`);
    line("no campaign", baseline);
    line(`campaign (quota ${QUOTA})`, withCampaign);
    console.log(`  raw Postgres ceiling   ${fmt(raw).padStart(7)} tx/s       (same work, ${concurrency} connections, no NATS/consumer)`);
    console.log(`  campaign ÷ no campaign ${fmt(withCampaign.perSecond / baseline.perSecond, 2)}   (goal ≥ 0.9)`);
    console.log(`  campaign ÷ raw ceiling ${fmt(withCampaign.perSecond / raw, 2)}`);
    console.log(`  last login → all ${QUOTA} vouchers issued: ${fmt(Math.max(0, lastIssue.t.getTime() - withCampaign.lastPublished))} ms (goal ≤ 2000); grant→voucher p50 ${fmt(pct(issueMs, 50))} ms p95 ${fmt(pct(issueMs, 95))} ms p99 ${fmt(pct(issueMs, 99))} ms`);
    console.log(`  grants: ${grants.length} (campaign counter ${granted}), distinct vouchers: ${new Set(grants.map((g) => g.voucher_id)).size}  ${grants.length === QUOTA && granted === QUOTA ? "EXACT" : "WRONG"}`);
    // Rows for `npm run bench`'s table (the services run in this process: its RSS).
    const rss = process.memoryUsage().rss / 2 ** 20;
    const via = `${fmt(LOGINS)} user_logged_in events, consumer concurrency ${concurrency}`;
    const lastToAll = Math.max(0, lastIssue.t.getTime() - withCampaign.lastPublished);
    const exact = grants.length === QUOTA && granted === QUOTA && new Set(grants.map((g) => g.voucher_id)).size === QUOTA;
    report({ id: "promotion.raw", path: "ceiling: pg first-login transaction", via: `${concurrency} connections, inbox + conditional UPDATE + grant`, rate: raw, unit: "tx/s", ok: LOGINS, errors: 0 });
    report({ id: "promotion.no-campaign", path: "first logins, no campaign", via, rate: baseline.perSecond, unit: "logins/s", ok: LOGINS, errors: 0, ...latencyStats(baseline.latencies), rssMiB: rss, vs: "promotion.raw" });
    report({
      id: "storm",
      path: `first-login storm (quota ${QUOTA})`,
      via,
      rate: withCampaign.perSecond,
      unit: "logins/s",
      ok: LOGINS,
      errors: 0,
      ...latencyStats(withCampaign.latencies),
      rssMiB: rss,
      vs: "promotion.no-campaign",
      goal: 0.9,
      targets: [
        { goal: `last login → all ${QUOTA} vouchers issued ≤ 2000 ms`, value: `${fmt(lastToAll)} ms`, met: lastToAll <= 2000 },
        { goal: `exactly ${QUOTA} grants, each with its own voucher`, value: `${grants.length} grants, counter ${granted}`, met: exact },
      ],
      notes: [`campaign ÷ raw Postgres ceiling: ${fmt(withCampaign.perSecond / raw, 2)}`],
    });
    if (!exact) process.exitCode = 1;
  } finally {
    await h.close();
  }
}

await main();
