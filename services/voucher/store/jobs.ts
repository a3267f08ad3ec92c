// Generation jobs: rows ↔ domain, the worker's lease, and the bulk insert of codes.
import { sql, type Kysely, type Transaction } from "kysely";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";
import type { GenerationJobsTable, JobStateValue, JobTriggerValue, VoucherDB } from "./schema.js";

type Db = Kysely<VoucherDB> | Transaction<VoucherDB>;

export interface Job {
  id: string;
  bookId: string;
  trigger: JobTriggerValue;
  state: JobStateValue;
  requestedCount: number;
  generatedCount: number;
  collisionCount: bigint;
  attemptCount: number;
  failureMessage: string;
  createdAt: Date;
  startedAt: Date | null;
  updatedAt: Date;
  finishedAt: Date | null;
}

export const toJob = (r: Record<string, any>): Job => ({
  id: r.id,
  bookId: r.book_id,
  trigger: r.trigger,
  state: r.state,
  requestedCount: r.requested_count,
  generatedCount: r.generated_count,
  collisionCount: BigInt(r.collision_count),
  attemptCount: r.attempt_count,
  failureMessage: r.failure_message,
  createdAt: new Date(r.created_at),
  startedAt: r.started_at ? new Date(r.started_at) : null,
  updatedAt: new Date(r.updated_at),
  finishedAt: r.finished_at ? new Date(r.finished_at) : null,
});

/** Inserts a queued job; for auto top-ups, nothing when the book already has one queued or running. */
export async function insertJob(trx: Db, j: { id: string; bookId: string; trigger: JobTriggerValue; count: number }): Promise<Job | undefined> {
  const row = await trx
    .insertInto("generation_jobs")
    .values({ id: j.id, book_id: j.bookId, trigger: j.trigger, state: "queued", requested_count: j.count })
    .onConflict((oc) => oc.column("book_id").where("trigger", "=", "auto_top_up").where("state", "in", ["queued", "running"]).doNothing())
    .returningAll()
    .executeTakeFirst();
  return row && toJob(row);
}

export async function findJob(db: Db, id: string): Promise<Job | undefined> {
  const row = await db.selectFrom("generation_jobs").selectAll().where("id", "=", id).executeTakeFirst();
  return row && toJob(row);
}

export async function listJobs(db: Db, f: { bookId?: string; state?: JobStateValue }, beforeId: string | undefined, limit: number): Promise<Job[]> {
  let q = db.selectFrom("generation_jobs").selectAll().orderBy("id", "desc").limit(limit);
  if (f.bookId) q = q.where("book_id", "=", f.bookId);
  if (f.state) q = q.where("state", "=", f.state);
  if (beforeId) q = q.where("id", "<", beforeId);
  return (await q.execute()).map(toJob);
}

/**
 * Takes a job for this worker: a queued one, or a running one whose worker's lease ran
 * out (it died). One conditional update, so two workers never run one job.
 */
export async function claimJob(db: Db, id: string, worker: string, leaseMs: number): Promise<Job | undefined> {
  const row = await db
    .updateTable("generation_jobs")
    .set({
      state: "running",
      worker,
      lease_until: sql`now() + ${leaseMs}::bigint * interval '1 millisecond'` as any,
      attempt_count: sql`attempt_count + 1` as any,
      started_at: sql`coalesce(started_at, now())` as any,
      updated_at: sql`now()` as any,
      failure_message: "",
    })
    .where("id", "=", id)
    .where((eb) => eb.or([eb("state", "=", "queued"), eb.and([eb("state", "=", "running"), eb("lease_until", "<", sql<Date>`now()`)])]))
    .returningAll()
    .executeTakeFirst();
  return row && toJob(row);
}

/** Ends this worker's run of a job: FAILED (resumable) or back to QUEUED for a retry, with the reason. */
export async function releaseJob(db: Db, id: string, worker: string, state: "failed" | "queued", message: string): Promise<Job | undefined> {
  const row = await db
    .updateTable("generation_jobs")
    .set({
      state,
      failure_message: message.slice(0, 2000),
      worker: null,
      lease_until: null,
      updated_at: sql`now()` as any,
      finished_at: state === "failed" ? (sql`now()` as any) : null,
    })
    .where("id", "=", id)
    .where("worker", "=", worker)
    .where("state", "=", "running")
    .returningAll()
    .executeTakeFirst();
  return row && toJob(row);
}

/** Puts a FAILED job back in the queue (its book not archived). */
export async function requeueFailedJob(trx: Db, id: string): Promise<Job | undefined> {
  const row = await trx
    .updateTable("generation_jobs")
    .set({ state: "queued", finished_at: null, updated_at: sql`now()` as any })
    .where("id", "=", id)
    .where("state", "=", "failed")
    .where(({ exists, selectFrom }) => exists(selectFrom("books").select("books.id").whereRef("books.id", "=", "generation_jobs.book_id").where("books.state", "<>", "archived")))
    .returningAll()
    .executeTakeFirst();
  return row && toJob(row);
}

/** Running jobs whose worker's lease ran out long ago: put back in the queue so an event can restart them. */
export async function requeueAbandonedJobs(trx: Db, graceMs: number): Promise<Job[]> {
  const rows = await trx
    .updateTable("generation_jobs")
    .set({ state: "queued", worker: null, lease_until: null, updated_at: sql`now()` as any, failure_message: "its worker stopped; restarted" })
    .where("state", "=", "running")
    .where("lease_until", "<", sql<Date>`now() - ${graceMs}::bigint * interval '1 millisecond'`)
    .returningAll()
    .execute();
  return rows.map(toJob);
}

export async function failJobsOfBook(trx: Db, bookId: string, message: string): Promise<void> {
  await trx
    .updateTable("generation_jobs")
    .set({ state: "failed", failure_message: message, worker: null, lease_until: null, updated_at: sql`now()` as any, finished_at: sql`now()` as any })
    .where("book_id", "=", bookId)
    .where("state", "in", ["queued", "running"])
    .execute();
}

// ── Chunks: raw pg, because COPY needs the connection itself (kysely does not expose it) ──

export interface ChunkLease {
  generated: number;
  requested: number;
  bookState: string;
  pattern: string;
}

/**
 * In the chunk's transaction: renews this worker's lease (the fencing check: a worker
 * that lost the job changes nothing) and reads the book's state and pattern.
 */
export async function renewChunkLease(client: pg.PoolClient, jobId: string, worker: string, leaseMs: number): Promise<ChunkLease | undefined> {
  const { rows } = await client.query(
    `UPDATE generation_jobs j SET lease_until = now() + $3::bigint * interval '1 millisecond'
     FROM books b
     WHERE j.id = $1 AND j.worker = $2 AND j.state = 'running' AND b.id = j.book_id
     RETURNING j.generated_count, j.requested_count, b.state AS book_state, b.code_pattern`,
    [jobId, worker, leaseMs],
  );
  const r = rows[0];
  return r && { generated: r.generated_count, requested: r.requested_count, bookState: r.book_state, pattern: r.code_pattern };
}

const copyEscape = (s: string) => s.replace(/\\/g, "\\\\");

/**
 * Inserts generated codes. Fast path: COPY, under a savepoint. The pattern's capacity
 * check keeps collisions rare (expected n²/2·space), so when COPY hits the unique index
 * the batch falls back to `INSERT … ON CONFLICT DO NOTHING`, which reports which codes
 * went in; the caller redraws the rest. Returns the codes inserted.
 */
export async function insertGenerated(client: pg.PoolClient, bookId: string, ids: string[], codes: string[]): Promise<{ inserted: number; collided: Set<string> }> {
  await client.query("SAVEPOINT generate_copy");
  try {
    const lines = function* () {
      const rows = 2_000;
      for (let i = 0; i < codes.length; i += rows) {
        let chunk = "";
        for (let k = i; k < Math.min(i + rows, codes.length); k++) chunk += `${ids[k]}\t${bookId}\t${copyEscape(codes[k])}\t1\n`;
        yield chunk;
      }
    };
    await pipeline(Readable.from(lines()), client.query(copyFrom("COPY codes (id, book_id, code, source) FROM STDIN")));
    await client.query("RELEASE SAVEPOINT generate_copy");
    return { inserted: codes.length, collided: new Set() };
  } catch (err) {
    if ((err as { code?: string }).code !== "23505") throw err;
    await client.query("ROLLBACK TO SAVEPOINT generate_copy");
  }
  const { rows } = await client.query<{ code: string }>(
    `INSERT INTO codes (id, book_id, code, source)
     SELECT i, $1, c, 1 FROM unnest($2::text[], $3::text[]) AS u(i, c)
     ON CONFLICT (code) DO NOTHING RETURNING code`,
    [bookId, ids, codes],
  );
  const went = new Set(rows.map((r) => r.code));
  return { inserted: went.size, collided: new Set(codes.filter((c) => !went.has(c))) };
}

/** Records a chunk's progress; the job succeeds when the last code is in. Book counters last (shortest lock). */
export async function recordChunk(client: pg.PoolClient, jobId: string, bookId: string, inserted: number, collisions: number): Promise<Job> {
  const { rows } = await client.query(
    `UPDATE generation_jobs SET generated_count = generated_count + $2, collision_count = collision_count + $3, updated_at = now(),
       state = CASE WHEN generated_count + $2 >= requested_count THEN 'succeeded' ELSE state END,
       finished_at = CASE WHEN generated_count + $2 >= requested_count THEN now() ELSE finished_at END,
       worker = CASE WHEN generated_count + $2 >= requested_count THEN NULL ELSE worker END,
       lease_until = CASE WHEN generated_count + $2 >= requested_count THEN NULL ELSE lease_until END
     WHERE id = $1 RETURNING *`,
    [jobId, inserted, collisions],
  );
  await client.query(`UPDATE books SET generated_count = generated_count + $2 WHERE id = $1`, [bookId, inserted]);
  return toJob(rows[0]);
}

export type { GenerationJobsTable };
