// The top-up scheduler with two replicas on one database: one leader (advisory lock), one
// top-up job per book, and a new leader when the first one stops.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { sql } from "kysely";
import { GenerationJobState, GenerationTrigger } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { bookInput, startHarness, waitFor, type Harness, type Replica } from "./harness.js";

let h: Harness;
let second: Replica;
let admin: { headers: { authorization: string } };

before(async () => {
  h = await startHarness("scheduler", { schedulerIntervalMs: 100 });
  second = await h.replica();
  admin = await h.admin();
});
after(() => h?.close());

describe("top-up scheduler", () => {
  test("with two replicas exactly one leads, and a book below its threshold gets exactly one top-up", async () => {
    await waitFor("a leader", async () => h.voucher.scheduler.isLeader() || second.voucher.scheduler.isLeader());
    const { book } = await h.client.createBook({ book: bookInput({ codePattern: "TOP-*{8}", autoTopUpThreshold: 10, autoTopUpBatchSize: 40 }) }, admin);
    await h.client.importCodes({ bookId: book!.id, codes: ["TOP-SEED-1", "TOP-SEED-2", "TOP-SEED-3"] }, admin);
    await h.client.activateBook({ bookId: book!.id }, admin);
    const job = await waitFor("a top-up job", async () => (await h.client.listGenerationJobs({ bookId: book!.id }, admin)).generationJobs[0]);
    assert.equal(job.trigger, GenerationTrigger.AUTO_TOP_UP);
    await waitFor("the top-up to finish", async () => (await h.client.getBook({ bookId: book!.id }, admin)).book!.codeCount === 43n);
    // Many more ticks: the book is above its threshold now, so nothing else starts.
    await new Promise((r) => setTimeout(r, 1_000));
    const jobs = (await h.client.listGenerationJobs({ bookId: book!.id }, admin)).generationJobs;
    assert.equal(jobs.length, 1);
    assert.equal(jobs[0].state, GenerationJobState.SUCCEEDED);
    const leaders = [h.voucher.scheduler, second.voucher.scheduler].filter((s) => s.isLeader());
    assert.equal(leaders.length, 1, "one leader");
    const follower = [h.voucher.scheduler, second.voucher.scheduler].find((s) => !s.isLeader())!;
    assert.equal(follower.ticks(), 0, "the other replica never ran a tick");
    assert.ok(leaders[0].ticks() >= 5);
  });

  test("when the leader stops, the other replica takes over and tops up the next book", async () => {
    const third = await h.replica({ schedulerIntervalMs: 100 });
    const replicas = [{ r: h.voucher, stop: undefined as undefined | (() => Promise<void>) }, { r: second.voucher, stop: second.stop }, { r: third.voucher, stop: third.stop }];
    const leader = replicas.find((x) => x.r.scheduler.isLeader())!;
    // Stop the leader's scheduler (on the first replica only the scheduler: the test's client talks to it).
    await leader.r.scheduler.stop();
    const next = await waitFor("a new leader", async () => replicas.find((x) => x !== leader && x.r.scheduler.isLeader()));
    assert.ok(next);
    const { book } = await h.client.createBook({ book: bookInput({ codePattern: "TOP2-*{8}", autoTopUpThreshold: 5, autoTopUpBatchSize: 20 }) }, admin);
    await h.client.activateBook({ bookId: book!.id }, admin);
    await waitFor("the top-up by the new leader", async () => (await h.client.getBook({ bookId: book!.id }, admin)).book!.codeCount === 20n);
    const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM generation_jobs WHERE book_id = ${book!.id}`.execute(h.voucher.platform.db);
    assert.equal(rows[0].n, "1");
  });
});
