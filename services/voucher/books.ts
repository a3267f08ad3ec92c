// Book use cases: creating and changing books, generation jobs, import and export.
// Transactions and rules here; SQL in store/, protocol in routes.ts.
import type { Kysely } from "kysely";
import { sql } from "kysely";
import { newId } from "../kit/ids.js";
import { failedPrecondition, invalidArgument, notFound } from "../kit/errors.js";
import type { Logger } from "../kit/log.js";
import { bookTransition, expireTime, FROZEN_AFTER_DRAFT, voucherState, type Book, type BookSettings, type BookState, type Voucher, type VoucherState } from "./domain/model.js";
import { checkCapacity, CodeDrawer, parsePattern, PatternError, type Capacity, type Pattern } from "./domain/pattern.js";
import { requestGeneration } from "./events.js";
import type { Idempotency, OnceOutcome as Outcome } from "../kit/idempotency.js";
import * as booksStore from "./store/books.js";
import * as jobsStore from "./store/jobs.js";
import { newIds } from "./store/ids.js";
import type { Job } from "./store/jobs.js";
import type { JobStateValue, VoucherDB } from "./store/schema.js";
import { runOnce, transaction } from "./store/tx.js";
import * as vouchersStore from "./store/vouchers.js";
import type { VoucherSettings } from "./settings.js";

export interface BookStats extends booksStore.BookCounts {
  bookId: string;
  generated: bigint;
  imported: bigint;
}

export interface PatternPreview extends Capacity {
  samples: string[];
  spaceSize: number;
  entropyBits: number;
}

const EXPORT_HEADER = "code,state,owner_user_id,assign_time,expire_time,use_count,max_uses\r\n";
const EXPORT_CHUNK_BYTES = 64 * 1024;
const EXPORT_PAGE = 5_000;

/** A pattern, or INVALID_ARGUMENT naming the position of the problem. */
export function patternOrInvalid(source: string, field: string): Pattern {
  try {
    return parsePattern(source);
  } catch (err) {
    if (err instanceof PatternError) {
      throw invalidArgument([{ field, reason: "PATTERN_SYNTAX", description: `at position ${err.position}: ${err.message}` }]);
    }
    throw err;
  }
}

export const codeCount = (b: Book) => Number(b.generatedCount + b.importedCount);

export class Books {
  private readonly statsCache = new Map<string, { at: number; stats: Promise<BookStats> }>();

  constructor(private readonly deps: { db: Kysely<VoucherDB>; settings: VoucherSettings; log: Logger }) {}

  private get db() {
    return this.deps.db;
  }

  /** Refuses (FAILED_PRECONDITION) a pattern that cannot hold the codes safely. */
  private requireCapacity(patternSource: string, existing: number, planned: number): void {
    if (!patternSource) {
      throw failedPrecondition("PATTERN_SPACE_TOO_SMALL", "the book has no code pattern: set `code_pattern` before generating codes");
    }
    const capacity = checkCapacity(parsePattern(patternSource), existing, planned, this.deps.settings.maxFillRatio);
    if (!capacity.acceptable) {
      throw failedPrecondition("PATTERN_SPACE_TOO_SMALL", capacity.explanation, { fillRatio: String(capacity.fillRatio), maxFillRatio: String(capacity.maxFillRatio) });
    }
  }

  async create(settings: BookSettings, initialCount: number, idem?: Idempotency<{ book: Book; job?: Job }>): Promise<Outcome<{ book: Book; job?: Job }>> {
    if (initialCount > 0) this.requireCapacity(settings.codePattern, 0, initialCount);
    if (settings.autoTopUpThreshold > 0) this.requireCapacity(settings.codePattern, initialCount, settings.autoTopUpBatchSize);
    return runOnce(this.db, idem, async (trx) => {
      const book = await booksStore.insertBook(trx, newId(), settings);
      if (initialCount <= 0) return { book };
      const job = (await jobsStore.insertJob(trx, { id: newId(), bookId: book.id, trigger: "book_created", count: initialCount }))!;
      await requestGeneration(trx, job);
      return { book, job };
    });
  }

  async get(id: string): Promise<Book> {
    const book = await booksStore.findBook(this.db, id);
    if (!book) throw notFound("BOOK_NOT_FOUND", `book ${id} does not exist`, { bookId: id });
    return book;
  }

  list(state: BookState | undefined, beforeId: string | undefined, limit: number): Promise<Book[]> {
    return booksStore.listBooks(this.db, { state, beforeId, limit });
  }

  /**
   * Applies the masked fields. The book row is locked for the merge (discount and minimum
   * share one currency, start must precede end), and the DRAFT-only fields are refused
   * under that lock.
   */
  async update(id: string, paths: string[], patch: Partial<BookSettings>, validate: (merged: BookSettings) => void): Promise<Book> {
    return transaction(this.db, async (trx) => {
      const row = await trx.selectFrom("books").selectAll().where("id", "=", id).forUpdate().executeTakeFirst();
      if (!row) throw notFound("BOOK_NOT_FOUND", `book ${id} does not exist`, { bookId: id });
      const current = booksStore.toBook(row);
      const frozen = paths.find((p) => FROZEN_AFTER_DRAFT.has(p));
      if (frozen && current.state !== "draft") {
        throw failedPrecondition("BOOK_FIELD_IMMUTABLE", `\`${frozen}\` cannot change once the book has left DRAFT`, { field: frozen });
      }
      const merged: BookSettings = { ...current, ...patch };
      validate(merged);
      if (paths.some((p) => ["code_pattern", "auto_top_up_threshold", "auto_top_up_batch_size"].includes(p)) && merged.autoTopUpThreshold > 0) {
        this.requireCapacity(merged.codePattern, codeCount(current), merged.autoTopUpBatchSize);
      }
      // Discount and minimum share the currency column: write both whenever either changes.
      const write: Partial<BookSettings> = { ...patch };
      if (patch.discount !== undefined || patch.minimumOrder !== undefined) {
        write.discount = merged.discount;
        write.minimumOrder = merged.minimumOrder;
      }
      return (await booksStore.updateBookSettings(trx, id, write, false))!;
    });
  }

  async transition(id: string, to: "active" | "paused" | "archived"): Promise<Book> {
    const from = (["draft", "active", "paused", "archived"] as BookState[]).filter((s) => bookTransition(s, to) === "change");
    return transaction(this.db, async (trx) => {
      const changed = await booksStore.transitionBook(trx, id, from, to);
      if (changed) {
        if (to === "archived") await jobsStore.failJobsOfBook(trx, id, "the book was archived");
        return changed;
      }
      const current = await booksStore.findBook(trx, id);
      if (!current) throw notFound("BOOK_NOT_FOUND", `book ${id} does not exist`, { bookId: id });
      if (bookTransition(current.state, to) === "noop") return current;
      throw failedPrecondition("INVALID_BOOK_STATE_TRANSITION", `a ${current.state} book cannot become ${to}`, { state: `BOOK_STATE_${current.state.toUpperCase()}` });
    });
  }

  /** Counts by state; cached briefly (a full pass over a big book is not free). */
  stats(id: string): Promise<BookStats> {
    const hit = this.statsCache.get(id);
    if (hit && Date.now() - hit.at < this.deps.settings.statsCacheMs) return hit.stats;
    const stats = (async () => {
      const book = await this.get(id);
      const counts = await booksStore.countCodesByState(this.db, id);
      return { ...counts, bookId: id, generated: book.generatedCount, imported: book.importedCount };
    })();
    this.statsCache.set(id, { at: Date.now(), stats });
    stats.catch(() => this.statsCache.delete(id));
    if (this.statsCache.size > 1_000) this.statsCache.delete(this.statsCache.keys().next().value as string);
    return stats;
  }

  async timeline(bookId: string | undefined, from: Date, to: Date | undefined, widthMs: number) {
    if (bookId) await this.get(bookId);
    const end = to ?? (await vouchersStore.dbNow(this.db));
    return vouchersStore.redemptionTimeline(this.db, bookId, from, end, widthMs);
  }

  async preview(patternSource: string, planned: number, sampleCount: number, bookId: string | undefined): Promise<PatternPreview> {
    const pattern = patternOrInvalid(patternSource, "code_pattern");
    const existing = bookId ? codeCount(await this.get(bookId)) : 0;
    const capacity = checkCapacity(pattern, existing, planned, this.deps.settings.maxFillRatio);
    const samples = new CodeDrawer(pattern).drawDistinct(Math.min(sampleCount, pattern.spaceSize));
    return {
      ...capacity,
      acceptable: planned === 0 ? true : capacity.acceptable,
      samples,
      spaceSize: pattern.spaceSize,
      entropyBits: pattern.entropyBits,
    };
  }

  async generate(bookId: string, count: number, idem?: Idempotency<Job>): Promise<Outcome<Job>> {
    return runOnce(this.db, idem, async (trx) => {
      const book = await booksStore.findBook(trx, bookId);
      if (!book) throw notFound("BOOK_NOT_FOUND", `book ${bookId} does not exist`, { bookId });
      if (book.state === "archived") throw failedPrecondition("BOOK_NOT_ACTIVE", "the book is archived", { state: "BOOK_STATE_ARCHIVED" });
      this.requireCapacity(book.codePattern, codeCount(book), count);
      const job = (await jobsStore.insertJob(trx, { id: newId(), bookId, trigger: "manual", count }))!;
      await requestGeneration(trx, job);
      return job;
    });
  }

  async job(id: string): Promise<Job> {
    const job = await jobsStore.findJob(this.db, id);
    if (!job) throw notFound("GENERATION_JOB_NOT_FOUND", `generation job ${id} does not exist`, { generationJobId: id });
    return job;
  }

  jobs(filter: { bookId?: string; state?: JobStateValue }, beforeId: string | undefined, limit: number): Promise<Job[]> {
    return jobsStore.listJobs(this.db, filter, beforeId, limit);
  }

  async resume(id: string): Promise<Job> {
    return transaction(this.db, async (trx) => {
      const requeued = await jobsStore.requeueFailedJob(trx, id);
      if (requeued) {
        await requestGeneration(trx, requeued);
        return requeued;
      }
      const job = await jobsStore.findJob(trx, id);
      if (!job) throw notFound("GENERATION_JOB_NOT_FOUND", `generation job ${id} does not exist`, { generationJobId: id });
      if (job.state === "queued" || job.state === "running") return job;
      throw failedPrecondition(
        "GENERATION_JOB_NOT_RESUMABLE",
        job.state === "succeeded" ? "the job has already succeeded" : "the job's book is archived",
        { state: `GENERATION_JOB_STATE_${job.state.toUpperCase()}` },
      );
    });
  }

  /**
   * Streams a job's state: at once, then whenever it changes (checked every 200 ms) and at
   * least every second, until it is final or the caller goes away.
   */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<Job> {
    let job = await this.job(id);
    yield job;
    let lastSent = Date.now();
    while (job.state === "queued" || job.state === "running") {
      await new Promise((r) => setTimeout(r, 200));
      if (signal.aborted) return;
      const next = await this.job(id);
      const changed = next.updatedAt.getTime() !== job.updatedAt.getTime() || next.state !== job.state || next.generatedCount !== job.generatedCount;
      job = next;
      if (changed || Date.now() - lastSent >= 1_000) {
        lastSent = Date.now();
        yield job;
      }
    }
  }

  /** Adds codes (already normalised and valid); repeats and codes existing anywhere are reported. */
  async import(bookId: string, codes: string[], idem?: Idempotency<{ imported: number; duplicates: string[] }>) {
    return runOnce(this.db, idem, async (trx) => {
      const book = await booksStore.findBook(trx, bookId);
      if (!book) throw notFound("BOOK_NOT_FOUND", `book ${bookId} does not exist`, { bookId });
      if (book.state === "archived") throw failedPrecondition("BOOK_NOT_ACTIVE", "the book is archived", { state: "BOOK_STATE_ARCHIVED" });
      const unique = [...new Set(codes)];
      const added = await vouchersStore.insertImported(trx, bookId, newIds(unique.length), unique);
      await booksStore.addCodeCounts(trx, bookId, 0, added.size);
      const seen = new Set<string>();
      const duplicates: string[] = [];
      for (const c of codes) {
        if ((!added.has(c) || seen.has(c)) && !duplicates.includes(c)) duplicates.push(c);
        seen.add(c);
      }
      return { imported: added.size, duplicates };
    });
  }

  /** The book's codes as CSV, in chunks of whole lines of at most 64 KiB, by code. */
  async *exportCsv(bookId: string, state: VoucherState | undefined): AsyncGenerator<{ csv: string; rows: number }> {
    await this.get(bookId);
    let pending = EXPORT_HEADER;
    let pendingRows = 0;
    let after: string | undefined;
    for (;;) {
      const page = await vouchersStore.listByCode(this.db, { bookId, state }, after, EXPORT_PAGE);
      for (const { voucher, now } of page) {
        const line = csvLine(voucher, now);
        if (Buffer.byteLength(pending) + Buffer.byteLength(line) > EXPORT_CHUNK_BYTES) {
          yield { csv: pending, rows: pendingRows };
          pending = "";
          pendingRows = 0;
        }
        pending += line;
        pendingRows++;
      }
      if (page.length < EXPORT_PAGE) break;
      after = page[page.length - 1].voucher.code;
    }
    yield { csv: pending, rows: pendingRows };
  }

  /** Books whose free codes fell below their threshold get a top-up job (one at a time per book, by constraint). */
  async topUp(limit = 100): Promise<Job[]> {
    const books = await booksStore.booksNeedingTopUp(this.db, limit);
    const started: Job[] = [];
    for (const book of books) {
      try {
        this.requireCapacity(book.codePattern, codeCount(book), book.autoTopUpBatchSize);
      } catch (err) {
        this.deps.log.warn({ bookId: book.id, err: (err as Error).message }, "auto top-up skipped: the pattern cannot hold more codes");
        continue;
      }
      const job = await transaction(this.db, async (trx) => {
        const inserted = await jobsStore.insertJob(trx, { id: newId(), bookId: book.id, trigger: "auto_top_up", count: book.autoTopUpBatchSize });
        if (inserted) await requestGeneration(trx, inserted);
        return inserted;
      });
      if (job) started.push(job);
    }
    return started;
  }

  /** Restarts jobs whose worker died (its lease long expired): queued again, with a fresh event. */
  async restartAbandonedJobs(graceMs: number): Promise<Job[]> {
    return transaction(this.db, async (trx) => {
      const jobs = await jobsStore.requeueAbandonedJobs(trx, graceMs);
      for (const job of jobs) await requestGeneration(trx, job);
      return jobs;
    });
  }

  /** Keeps planner statistics fresh after bulk inserts (some machines run with autovacuum off). */
  async analyze(): Promise<void> {
    await sql`ANALYZE codes`.execute(this.db);
  }
}

const csvCell = (v: string) => (/[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
const iso = (d: Date | null) => (d ? d.toISOString() : "");

function csvLine(v: Voucher, now: Date): string {
  return (
    [
      csvCell(v.code),
      voucherState(v, now).toUpperCase(),
      csvCell(v.ownerUserId ?? ""),
      iso(v.assignedAt),
      iso(expireTime(v)),
      String(v.useCount),
      String(v.book.usesPerCode),
    ].join(",") + "\r\n"
  );
}
