// The generation worker: consumes `voucher.generation_requested` (a kit durable consumer,
// so each event is handled once per job request and retried with backoff) and runs the
// job in chunks. Each chunk is one transaction that renews this worker's lease on the job
// (a worker that lost it changes nothing), inserts the codes (COPY; on a collision,
// INSERT … ON CONFLICT DO NOTHING and redraw), and records the progress, so a job stopped
// anywhere resumes from its last committed chunk and never counts a code twice.
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import type { NatsConnection } from "nats";
import pg from "pg";
import type { Registry } from "prom-client";
import { GenerationRequestedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { startConsumer, type EventConsumer } from "../kit/events/index.js";
import type { Logger } from "../kit/log.js";
import { CodeDrawer, parsePattern } from "./domain/pattern.js";
import { GENERATION_REQUESTED } from "./events.js";
import { newIds } from "./store/ids.js";
import * as jobs from "./store/jobs.js";
import type { VoucherDB } from "./store/schema.js";
import type { VoucherSettings } from "./settings.js";

/** Deliveries of one job request before the job is left FAILED (resumable). */
const MAX_DELIVER = 4;
/** Redraw rounds per chunk before giving up: only a pattern far fuller than allowed gets here. */
const MAX_REDRAWS = 50;

export class PermanentJobFailure extends Error {}

export interface GenerationWorkerOptions {
  db: Kysely<VoucherDB>;
  /** A small pool of raw connections for COPY (the kysely pool does not expose its clients). */
  copyPool: pg.Pool;
  settings: VoucherSettings;
  log: Logger;
  /** Called after a job finishes (e.g. to refresh planner statistics). */
  onJobDone?: (job: jobs.Job) => void;
}

export class GenerationWorker {
  readonly workerId = `${hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`;
  private readonly log: Logger;
  private stopping = false;

  constructor(private readonly opts: GenerationWorkerOptions) {
    this.log = opts.log.child({ component: "generation" });
  }

  /** Subscribes the durable consumer. */
  start(nc: NatsConnection, stream: string, schema: string, registry: Registry, durable = "voucher-generation"): Promise<EventConsumer> {
    return startConsumer({
      nc,
      stream,
      durable,
      filterSubject: GENERATION_REQUESTED,
      schema: GenerationRequestedSchema,
      db: this.opts.db,
      schemaName: schema,
      maxDeliver: MAX_DELIVER,
      backoffMs: [500, 2_000, 5_000],
      concurrency: this.opts.settings.generationConcurrency,
      log: this.opts.log,
      registry,
      // A job runs for up to minutes in chunks of its own transactions, and claimJob's lease
      // already makes a second run of the same job a no-op: no transaction around it.
      transactional: false,
      handle: async (_db, event, meta) => {
        await this.run(event.generationJobId, meta.deliveryCount >= MAX_DELIVER);
      },
    });
  }

  stop() {
    this.stopping = true;
  }

  /**
   * Runs a job to its end. Throws to have the event redelivered (the job goes back to
   * QUEUED with the reason); on the last delivery, or for a failure no retry can fix, the
   * job is left FAILED instead, resumable by ResumeGenerationJob.
   */
  async run(jobId: string, lastAttempt = true): Promise<jobs.Job | undefined> {
    const { db, settings } = this.opts;
    const job = await jobs.claimJob(db, jobId, this.workerId, settings.jobLeaseMs);
    if (!job) {
      // Finished, failed, unknown, or running under a live worker: nothing for us to do.
      this.log.debug({ jobId }, "generation job not claimable; skipping");
      return undefined;
    }
    this.log.info({ jobId, bookId: job.bookId, requested: job.requestedCount, done: job.generatedCount, attempt: job.attemptCount }, "generation job started");
    const started = Date.now();
    try {
      let current = job;
      while (current.state === "running") {
        if (this.stopping) throw new Error("the worker is stopping");
        current = await this.chunk(current);
      }
      this.log.info({ jobId, generated: current.generatedCount, collisions: current.collisionCount.toString(), ms: Date.now() - started }, "generation job finished");
      this.opts.onJobDone?.(current);
      return current;
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const permanent = err instanceof PermanentJobFailure;
      const state = permanent || lastAttempt ? "failed" : "queued";
      await jobs.releaseJob(db, jobId, this.workerId, state, message).catch((e) => this.log.error({ err: e, jobId }, "cannot record the job's failure"));
      this.log.warn({ jobId, err: message, state }, "generation job stopped");
      if (state === "queued") throw err;
      return undefined;
    }
  }

  /** One chunk in one transaction; returns the job as recorded after it. */
  private async chunk(job: jobs.Job): Promise<jobs.Job> {
    const client = await this.opts.copyPool.connect();
    try {
      await client.query("BEGIN");
      try {
        const lease = await jobs.renewChunkLease(client, job.id, this.workerId, this.opts.settings.jobLeaseMs);
        if (!lease) throw new PermanentJobFailure("this worker no longer holds the job");
        if (lease.bookState === "archived") throw new PermanentJobFailure("the book was archived");
        if (!lease.pattern) throw new PermanentJobFailure("the book has no code pattern");
        const drawer = new CodeDrawer(parsePattern(lease.pattern));
        const want = Math.min(this.opts.settings.generationChunkSize, lease.requested - lease.generated);
        let inserted = 0;
        let collisions = 0;
        for (let round = 0; inserted < want; round++) {
          if (round >= MAX_REDRAWS) throw new PermanentJobFailure("too many collisions: the pattern is nearly full");
          const codes = drawer.drawDistinct(want - inserted);
          const result = await jobs.insertGenerated(client, job.bookId, newIds(codes.length), codes);
          inserted += result.inserted;
          collisions += result.collided.size;
        }
        const recorded = await jobs.recordChunk(client, job.id, job.bookId, inserted, collisions);
        await client.query("COMMIT");
        return recorded;
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw err;
      }
    } finally {
      client.release();
    }
  }
}
