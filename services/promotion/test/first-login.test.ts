// First-login campaigns: exactly `quota` grants whatever the concurrency, the replicas,
// a replica killed mid-run, or events replayed; every grant gets one voucher.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { sql } from "kysely";
import { hashPassword } from "../../auth/passwords.js";
import { newId } from "../../kit/ids.js";
import { startHarness, waitFor, type Harness } from "./harness.js";

let h: Harness;
before(async () => {
  h = await startHarness("first_login");
});
after(async () => {
  await h?.close();
});

const db = () => h.promotion.platform.db;

async function grantCounts(campaignId: string) {
  const rows = await db()
    .selectFrom("grants")
    .select(["state", "voucher_id", "user_id"])
    .where("campaign_id", "=", campaignId)
    .execute();
  const campaign = await db().selectFrom("campaigns").select(["granted", "quota"]).where("id", "=", campaignId).executeTakeFirstOrThrow();
  return { rows, granted: campaign.granted, issued: rows.filter((r) => r.state === "issued").length };
}

/** Every event of these ids handled by the first-login consumer (a crash may leave a few for redelivery). */
async function handledLogins(eventIds: string[]) {
  const rows = await db().selectFrom("inbox").select(sql<number>`count(*)::int`.as("n")).where("consumer", "=", "promotion-first-login").where("event_id", "in", eventIds).executeTakeFirstOrThrow();
  return rows.n;
}

async function allIssued(campaignId: string, quota: number) {
  return waitFor(`${quota} grants with vouchers`, async () => {
    const c = await grantCounts(campaignId);
    return c.issued === quota && c;
  }, 30_000, 100);
}

async function codesOf(voucherIds: string[]) {
  const admin = await h.admin();
  const codes: string[] = [];
  for (let i = 0; i < voucherIds.length; i += 100) {
    const res = await h.voucherClient.batchGetVouchers({ voucherIds: voucherIds.slice(i, i + 100) }, admin);
    codes.push(...res.vouchers.map((v) => v.code));
  }
  return codes;
}

describe("first-login grants", () => {
  test("1,000 new users log in for the first time at once through auth against a quota of 100: every login succeeds, exactly 100 get a voucher", async () => {
    const campaign = await h.activeCampaign({ quota: 100 });
    // Users straight into auth's table with one hash: registering 1,000 through the rpc
    // would cost a hash each; their logins below are real Login rpcs (argon2id and all).
    const password = "a thousand first logins";
    const hash = await hashPassword(password);
    const stamp = Date.now().toString(36);
    const names = Array.from({ length: 1_000 }, (_, i) => `crowd${stamp}u${i}`);
    const ids = names.map(() => newId());
    const phones = names.map((_, i) => `+8491${String(Date.now() % 1_000 * 1_000 + i).padStart(7, "0")}`);
    await sql`INSERT INTO users (id, full_name, username, username_key, email, phone_number, password_hash)
      SELECT id, 'Crowd User', u, u, u || '@example.com', p, ${hash} FROM unnest(${ids}::text[], ${names}::text[], ${phones}::text[]) AS t(id, u, p)`.execute(h.auth.platform.db);

    const handled = async () => (await sql<{ n: number }>`SELECT count(*)::int AS n FROM inbox WHERE consumer = 'promotion-first-login'`.execute(db())).rows[0].n;
    const handledBefore = await handled();

    const outcomes = await Promise.allSettled(names.map((identifier) => h.authClient.login({ identifier, password })));
    const failed = outcomes.filter((o) => o.status === "rejected");
    assert.deepEqual(failed.map((f) => String((f as PromiseRejectedResult).reason)).slice(0, 3), [], `${failed.length} logins failed`);
    const logins = outcomes.map((o) => (o as PromiseFulfilledResult<Awaited<ReturnType<typeof h.authClient.login>>>).value);
    assert.ok(logins.every((l) => l.firstLogin && l.accessToken), "every one is a first login with its tokens");

    const done = await allIssued(campaign.id, 100);
    assert.equal(done.granted, 100);
    const winners = new Set(done.rows.map((r) => r.user_id));
    assert.equal(winners.size, 100);
    assert.ok([...winners].every((u) => ids.includes(u)), "every grant to one of the 1,000");
    const voucherIds = done.rows.map((r) => r.voucher_id!);
    assert.equal(new Set(await codesOf(voucherIds)).size, 100, "100 distinct codes");
    // Every login event handled, none parked; the 900 others hold no grant.
    await waitFor("all 1,000 first-login events handled", async () => (await handled()) - handledBefore >= 1_000, 60_000, 200);
    assert.deepEqual(await db().selectFrom("dead_letters").selectAll().execute(), []);
    const loser = logins.find((l) => !winners.has(l.user!.id))!;
    const theirs = await h.client.listMyPromotions({}, { headers: { authorization: `Bearer ${loser.accessToken}` } });
    assert.equal(theirs.grants.length, 0, "a login after the 100th gets no voucher");
    assert.equal((await grantCounts(campaign.id)).granted, 100);
  });

  test("exactly 100 grants under 1,000 concurrent first logins across two promotion instances", async () => {
    const campaign = await h.activeCampaign({ quota: 100 });
    const second = await h.replica();
    const users = Array.from({ length: 1_000 }, () => newId());
    const eventIds = await Promise.all(users.map((u) => h.publishLogin(u)));

    await waitFor("every login handled", async () => (await handledLogins(eventIds)) === 1_000, 30_000, 100);
    const done = await allIssued(campaign.id, 100);
    assert.equal(done.rows.length, 100);
    assert.equal(done.granted, 100);
    assert.equal(new Set(done.rows.map((r) => r.user_id)).size, 100);
    const voucherIds = done.rows.map((r) => r.voucher_id!);
    assert.equal(new Set(voucherIds).size, 100, "100 distinct vouchers");
    assert.equal(new Set(await codesOf(voucherIds)).size, 100, "100 distinct codes");
    // The 900 others: handled without error (nothing parked), no voucher.
    const letters = await db().selectFrom("dead_letters").selectAll().execute();
    assert.deepEqual(letters, []);

    // Replaying all 1,000 events (the durable consumer recreated from the start of the
    // stream) and duplicating them under new event ids changes nothing.
    await second.stop();
    await h.stopPrimary();
    const jsm = await h.nc.jetstreamManager();
    await jsm.consumers.delete(h.config.natsStream, "promotion-first-login");
    const fresh = await h.replica();
    // Later tests (and this file's helpers) talk to the fresh replica.
    h.client = fresh.client;
    h.promotion = fresh.promotion;
    const duplicates = await Promise.all(users.slice(0, 300).map((u) => h.publishLogin(u)));
    await waitFor("the replay and the duplicates handled", async () => {
      const info = await jsm.consumers.info(h.config.natsStream, "promotion-first-login");
      return info.num_pending === 0 && info.num_ack_pending === 0 && (await handledLogins(duplicates)) === 300;
    }, 30_000, 100);
    const afterReplay = await grantCounts(campaign.id);
    assert.equal(afterReplay.rows.length, 100);
    assert.equal(afterReplay.granted, 100);
  });

  test("still exactly 100 with two replicas, one killed mid-run and restarted, each grant with its voucher", async () => {
    const campaign = await h.activeCampaign({ quota: 100 });
    const child = await h.childReplica();
    const users = Array.from({ length: 1_000 }, () => newId());
    const eventIds: string[] = [];
    // First half, then kill the child while it is busy with it, then the second half.
    eventIds.push(...(await Promise.all(users.slice(0, 500).map((u) => h.publishLogin(u)))));
    await waitFor("grants under way", async () => (await grantCounts(campaign.id)).granted >= 20, 30_000, 10);
    await child.kill();
    eventIds.push(...(await Promise.all(users.slice(500).map((u) => h.publishLogin(u)))));
    const restarted = await h.childReplica();

    const done = await allIssued(campaign.id, 100);
    assert.equal(done.rows.length, 100);
    assert.equal(done.granted, 100);
    assert.equal(new Set(done.rows.map((r) => r.voucher_id)).size, 100);
    assert.equal(new Set(await codesOf(done.rows.map((r) => r.voucher_id!))).size, 100);
    await restarted.stop();
  });

  test("two first-login campaigns at once: each fills exactly, a login takes one slot of each, and no login deadlocks", async () => {
    const a = await h.activeCampaign({ quota: 40, name: "First 40 (a)" });
    const b = await h.activeCampaign({ quota: 40, name: "First 40 (b)" });
    const users = Array.from({ length: 150 }, () => newId());
    const eventIds = await Promise.all(users.map((u) => h.publishLogin(u)));
    await waitFor("every login handled", async () => (await handledLogins(eventIds)) === 150, 30_000, 100);
    const [doneA, doneB] = [await allIssued(a.id, 40), await allIssued(b.id, 40)];
    assert.deepEqual([doneA.rows.length, doneA.granted, doneB.rows.length, doneB.granted], [40, 40, 40, 40]);
    // Both campaigns' slots are taken in one statement per login: the same 40 users won both.
    assert.deepEqual(doneA.rows.map((r) => r.user_id).sort(), doneB.rows.map((r) => r.user_id).sort());
    assert.deepEqual(await db().selectFrom("dead_letters").selectAll().execute(), []);
    const admin = await h.admin();
    for (const c of [a, b]) await h.client.endCampaign({ campaignId: c.id }, admin);
  });

  test("a login that is not the first, or a paused campaign, grants nothing", async () => {
    const campaign = await h.activeCampaign({ quota: 5 });
    const regular = await h.publishLogin(newId(), { firstLogin: false });
    await h.client.pauseCampaign({ campaignId: campaign.id }, await h.admin());
    const whilePaused = await h.publishLogin(newId());
    await waitFor("both logins handled", async () => (await handledLogins([regular, whilePaused])) === 2);
    assert.equal((await grantCounts(campaign.id)).granted, 0);
  });

  test("real logins through auth: the first 3 of 8 new users get the voucher and see its code", async () => {
    const campaign = await h.activeCampaign({ quota: 3 });
    const people = Array.from({ length: 8 }, (_, i) => {
      const tag = `${Date.now().toString(36)}${i}${Math.random().toString(36).slice(2, 6)}`;
      return { fullName: `User ${i}`, username: `u${tag}`, email: `${tag}@example.com`, phoneNumber: `+8490${String(Math.floor(Math.random() * 10_000_000)).padStart(7, "0")}`, password: "violet otter maps 42" };
    });
    for (const p of people) await h.authClient.register(p);
    const logins = await Promise.all(people.map((p) => h.authClient.login({ identifier: p.email, password: p.password })));
    assert.ok(logins.every((l) => l.firstLogin && l.accessToken), "every login succeeds");
    const done = await allIssued(campaign.id, 3);
    assert.equal(done.granted, 3);
    // A winner sees the voucher's code with their own token from auth.
    const winner = logins.find((l) => done.rows.some((r) => r.user_id === l.user!.id))!;
    const mine = await h.client.listMyPromotions({}, { headers: { authorization: `Bearer ${winner.accessToken}` } });
    assert.equal(mine.grants.length, 1);
    assert.equal(mine.grants[0].campaignId, campaign.id);
    assert.match(mine.grants[0].voucher?.code ?? "", /^T-/);
    // A later login of the same user changes nothing.
    await h.authClient.login({ identifier: people[0].email, password: people[0].password });
    assert.equal((await grantCounts(campaign.id)).granted, 3);
  });
});
