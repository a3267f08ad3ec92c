// Generation jobs through the event, the worker and the database: chunks, progress on the
// watch stream, uniqueness by constraint, collisions redrawn, failures resumed.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";
import { sql } from "kysely";
import { GenerationJobState, VoucherState, type GenerationJob } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { newId } from "../../kit/ids.js";
import { bookInput, failure, startHarness, waitFor, type Harness, type Replica } from "./harness.js";

let h: Harness;
let roomy: Replica;
let admin: { headers: { authorization: string } };

before(async () => {
  h = await startHarness("generation", { generationChunkSize: 5_000 });
  // A second replica that accepts crowded patterns, to force collisions on purpose.
  roomy = await h.replica({ maxFillRatio: 0.95, generationChunkSize: 5_000 });
  admin = await h.admin();
});
after(() => h?.close());

async function finished(jobId: string): Promise<GenerationJob> {
  return waitFor(`job ${jobId} to finish`, async () => {
    const job = (await h.client.getGenerationJob({ generationJobId: jobId }, admin)).generationJob!;
    return job.state === GenerationJobState.SUCCEEDED || job.state === GenerationJobState.FAILED ? job : undefined;
  });
}

describe("generation", () => {
  test("CreateBook with 20,000 codes runs a job from its event in chunks, streams progress to SUCCEEDED, and stores 20,000 distinct codes of the pattern", async () => {
    const created = await h.client.createBook({ book: bookInput({ codePattern: "GEN-*{8}" }), initialCodeCount: 20_000, requestId: randomUUID() }, admin);
    const job = created.generationJob!;
    assert.equal(job.state, GenerationJobState.QUEUED, "the rpc only queues the job");
    const seen: GenerationJob[] = [];
    for await (const msg of h.client.watchGenerationJob({ generationJobId: job.id }, admin)) seen.push(msg.generationJob!);
    const last = seen[seen.length - 1];
    assert.equal(last.state, GenerationJobState.SUCCEEDED);
    assert.equal(last.generatedCount, 20_000);
    assert.ok(seen.length >= 2, "progress was streamed");
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i].generatedCount >= seen[i - 1].generatedCount, "progress never goes back");
    assert.ok(seen.some((j) => j.generatedCount > 0 && j.generatedCount < 20_000) || seen.length >= 2);
    const { rows } = await sql<{ n: string; distinct_codes: string; shaped: string }>`
      SELECT count(*) AS n, count(DISTINCT code) AS distinct_codes,
             count(*) FILTER (WHERE code ~ '^GEN-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}$') AS shaped
      FROM codes WHERE book_id = ${created.book!.id}`.execute(h.voucher.platform.db);
    assert.deepEqual(rows[0], { n: "20000", distinct_codes: "20000", shaped: "20000" });
    assert.equal((await h.client.getBook({ bookId: created.book!.id }, admin)).book?.codeCount, 20_000n);
    const stats = (await h.client.getBookStats({ bookId: created.book!.id }, admin)).stats!;
    assert.equal(stats.freeCount, 20_000n);
    assert.equal(stats.generatedCount, 20_000n);
    const watchedAgain = [];
    for await (const msg of h.client.watchGenerationJob({ generationJobId: job.id }, admin)) watchedAgain.push(msg);
    assert.equal(watchedAgain.length, 1, "watching a finished job sends one message");
  });

  test("a pattern too small for the count is refused up front with PATTERN_SPACE_TOO_SMALL; PreviewPattern explains why", async () => {
    const refused = await failure(h.client.createBook({ book: bookInput({ codePattern: "SMALL-*{4}" }), initialCodeCount: 1_000 }, admin));
    assert.deepEqual([refused.code, refused.reason], ["FailedPrecondition", "PATTERN_SPACE_TOO_SMALL"]);
    const preview = await h.client.previewPattern({ codePattern: "SMALL-*{4}", codeCount: 1_000, sampleCount: 3 }, admin);
    assert.equal(preview.acceptable, false);
    assert.equal(preview.spaceSize, 31 ** 4);
    assert.equal(preview.samples.length, 3);
    assert.match(preview.explanation, /at most 0\.00010% is allowed/);
    const syntax = await failure(h.client.previewPattern({ codePattern: "AB-*{99}" }, admin));
    assert.equal(syntax.code, "InvalidArgument");
  });

  test("collisions with existing codes are redrawn: two jobs fill a crowded pattern with distinct codes only", async () => {
    const { book } = await roomy.client.createBook({ book: bookInput({ codePattern: "CC-####" }) }, admin);
    const first = await roomy.client.generateCodes({ bookId: book!.id, codeCount: 5_000 }, admin);
    assert.equal((await finished(first.generationJob!.id)).state, GenerationJobState.SUCCEEDED);
    const second = await roomy.client.generateCodes({ bookId: book!.id, codeCount: 2_000 }, admin);
    const done = await finished(second.generationJob!.id);
    assert.equal(done.state, GenerationJobState.SUCCEEDED);
    assert.ok(done.collisionCount > 0n, "collisions happened and were counted");
    const { rows } = await sql<{ n: string; d: string }>`SELECT count(*) AS n, count(DISTINCT code) AS d FROM codes WHERE book_id = ${book!.id}`.execute(h.voucher.platform.db);
    assert.deepEqual(rows[0], { n: "7000", d: "7000" });
  });

  test("a job that fails keeps its codes; resumed, it generates only the remainder", async () => {
    const { book } = await h.client.createBook({ book: bookInput({ codePattern: "RES-*{8}" }) }, admin);
    const db = h.voucher.platform.db;
    const jobId = newId();
    await sql`INSERT INTO generation_jobs (id, book_id, trigger, state, requested_count) VALUES (${jobId}, ${book!.id}, 'manual', 'queued', 12000)`.execute(db);
    // The disk "fills up" once 5,000 codes are in.
    await sql`CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF (SELECT generated_count FROM generation_jobs WHERE id = ${sql.lit(jobId)}) >= 5000 THEN RAISE EXCEPTION 'could not extend file: No space left on device'; END IF;
        RETURN NULL;
      END $$`.execute(db);
    await sql`CREATE TRIGGER test_disk_full BEFORE INSERT ON codes FOR EACH STATEMENT EXECUTE FUNCTION test_disk_full()`.execute(db);
    try {
      await h.voucher.worker.run(jobId, true);
    } finally {
      await sql`DROP TRIGGER test_disk_full ON codes`.execute(db);
      await sql`DROP FUNCTION test_disk_full()`.execute(db);
    }
    const failed = (await h.client.getGenerationJob({ generationJobId: jobId }, admin)).generationJob!;
    assert.equal(failed.state, GenerationJobState.FAILED);
    assert.equal(failed.generatedCount, 5_000);
    assert.match(failed.failureMessage, /No space left/);
    const resumed = await h.client.resumeGenerationJob({ generationJobId: jobId }, admin);
    assert.equal(resumed.generationJob?.state, GenerationJobState.QUEUED);
    const done = await finished(jobId);
    assert.equal(done.state, GenerationJobState.SUCCEEDED);
    assert.equal(done.generatedCount, 12_000);
    assert.equal(done.attemptCount, 2);
    const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM codes WHERE book_id = ${book!.id}`.execute(db);
    assert.equal(rows[0].n, "12000");
    assert.equal((await failure(h.client.resumeGenerationJob({ generationJobId: jobId }, admin))).reason, "GENERATION_JOB_NOT_RESUMABLE");
  });

  test("GenerateCodes with a request_id starts one job however often it is retried; an archived book refuses", async () => {
    const { book } = await h.client.createBook({ book: bookInput({ codePattern: "IDM-*{8}" }) }, admin);
    const requestId = randomUUID();
    const jobs = await Promise.all(Array.from({ length: 5 }, () => h.client.generateCodes({ bookId: book!.id, codeCount: 10, requestId }, admin)));
    assert.equal(new Set(jobs.map((j) => j.generationJob!.id)).size, 1);
    await finished(jobs[0].generationJob!.id);
    const listed = await h.client.listGenerationJobs({ bookId: book!.id }, admin);
    assert.equal(listed.generationJobs.length, 1);
    await h.client.archiveBook({ bookId: book!.id }, admin);
    assert.equal((await failure(h.client.generateCodes({ bookId: book!.id, codeCount: 10 }, admin))).reason, "BOOK_NOT_ACTIVE");
  });

  test("ExportCodes streams the book as CSV by code, header first", async () => {
    const { book } = await h.client.createBook({ book: bookInput() }, admin);
    await h.client.importCodes({ bookId: book!.id, codes: ["EXP-CCC", "EXP-AAA", "EXP-BBB"] }, admin);
    await h.client.activateBook({ bookId: book!.id }, admin);
    await h.client.assignVoucher({ bookId: book!.id, userId: "u-csv", code: "EXP-BBB" }, admin);
    let csv = "";
    let rows = 0;
    for await (const chunk of h.client.exportCodes({ bookId: book!.id }, admin)) {
      csv += Buffer.from(chunk.csv).toString("utf8");
      rows += chunk.rowCount;
    }
    const lines = csv.trimEnd().split("\r\n");
    assert.equal(lines[0], "code,state,owner_user_id,assign_time,expire_time,use_count,max_uses");
    assert.deepEqual(lines.slice(1).map((l) => l.split(",").slice(0, 3).join(",")), ["EXP-AAA,FREE,", "EXP-BBB,ASSIGNED,u-csv", "EXP-CCC,FREE,"]);
    assert.equal(rows, 3);
    let onlyAssigned = "";
    for await (const chunk of h.client.exportCodes({ bookId: book!.id, state: VoucherState.ASSIGNED }, admin)) onlyAssigned += Buffer.from(chunk.csv).toString("utf8");
    assert.equal(onlyAssigned.trimEnd().split("\r\n").length, 2);
  });
});
