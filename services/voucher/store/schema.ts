// The voucher service's tables (Postgres schema `voucher`) and their migrations.
//
// Every limit lives here, in the database, so no interleaving of application code can
// break it:
// - `codes.code` is unique platform-wide (a customer types only the code);
// - `codes.grant_id` is unique: one voucher per promotion grant, however late the retry;
// - `codes.use_count <= uses_per_code` and the per-user counters in `book_users` only move
//   through conditional `UPDATE … WHERE … RETURNING` statements (see store/vouchers.ts);
// - a free code is claimed with `FOR UPDATE SKIP LOCKED` through `codes_free_pick`, the only
//   index ordered by `pick` (a random key), so the planner cannot walk another index past
//   every claimed row (the trap STYLE.md measured);
// - one auto top-up job per book at a time (`generation_jobs_one_auto_top_up`);
// - request ids (AIP-155) are a primary key, inserted in the transaction of the effect.
import { sql, type ColumnType, type Generated, type Kysely, type Migration } from "kysely";
import type { EventTables } from "../../kit/events/index.js";
import type { IdempotencyTables } from "../../kit/idempotency.js";

type Timestamp = ColumnType<Date, Date | string, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null, Date | string | null>;
/** pg returns int8 as a string; stores convert at their boundary. */
type Int8 = ColumnType<string, string | number | bigint, string | number | bigint>;
/** Columns with a database default (kysely's Generated<> cannot wrap a ColumnType). */
type DefaultTimestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type DefaultInt8 = ColumnType<string, string | number | bigint | undefined, string | number | bigint>;
type NullableInt8 = ColumnType<string | null, string | number | bigint | null, string | number | bigint | null>;

export type BookStateValue = "draft" | "active" | "paused" | "archived";
export type JobStateValue = "queued" | "running" | "succeeded" | "failed";
export type JobTriggerValue = "book_created" | "manual" | "auto_top_up";

export interface BooksTable {
  id: string;
  name: string;
  description: string;
  /** Percent discount in basis points; exactly one of this and `discount_amount_minor` is set. */
  discount_percent_bp: number | null;
  discount_cap_minor: NullableInt8;
  discount_amount_minor: NullableInt8;
  /** The one currency the book's amounts (fixed discount, cap, minimum) are in; null when none is. */
  currency: string | null;
  minimum_order_minor: NullableInt8;
  start_at: NullableTimestamp;
  end_at: NullableTimestamp;
  code_validity_ms: NullableInt8;
  code_pattern: string;
  uses_per_code: number;
  max_codes_per_user: number;
  max_redemptions_per_user: number;
  auto_top_up_threshold: number;
  auto_top_up_batch_size: number;
  state: BookStateValue;
  generated_count: DefaultInt8;
  imported_count: DefaultInt8;
  created_at: DefaultTimestamp;
  updated_at: DefaultTimestamp;
}

export interface CodesTable {
  id: string;
  book_id: string;
  code: string;
  /** A random key: claims start at a random pick so nobody can predict who gets which code. */
  pick: Generated<number>;
  /** 1 generated, 2 imported. */
  source: number;
  owner_user_id: string | null;
  grant_id: string | null;
  assigned_at: NullableTimestamp;
  use_count: Generated<number>;
  /** The fencing token of the code's latest reservation (0: never reserved). */
  fence: DefaultInt8;
  /** End of the latest reservation's lease while it holds the code; null when released or used. */
  lease_expires_at: NullableTimestamp;
  last_redeemed_at: NullableTimestamp;
  created_at: DefaultTimestamp;
}

export interface BookUsersTable {
  book_id: string;
  user_id: string;
  /** Codes of the book assigned to the user: checked against `max_codes_per_user`. */
  codes_held: number;
  /** Redemptions in effect: checked against `max_redemptions_per_user`. */
  redemptions: number;
}

export interface ReservationsTable {
  id: string;
  /** sha256 of the token handed to the client; the token itself is never stored here. */
  token_hash: Buffer;
  code_id: string;
  user_id: string;
  fence: Int8;
  created_at: Timestamp;
  expires_at: Timestamp;
  released_at: NullableTimestamp;
  used_at: NullableTimestamp;
}

export interface RedemptionsTable {
  id: string;
  code_id: string;
  book_id: string;
  user_id: string;
  code: string;
  order_reference: string;
  order_minor: Int8;
  currency: string;
  discount_minor: Int8;
  state: "redeemed" | "rolled_back";
  reservation_id: string | null;
  redeemed_at: DefaultTimestamp;
  rolled_back_at: NullableTimestamp;
  rollback_reason: string | null;
}

export interface GenerationJobsTable {
  id: string;
  book_id: string;
  trigger: JobTriggerValue;
  state: JobStateValue;
  requested_count: number;
  generated_count: Generated<number>;
  collision_count: DefaultInt8;
  attempt_count: Generated<number>;
  failure_message: Generated<string>;
  /** The worker running it and until when its lease holds; another may take over after. */
  worker: string | null;
  lease_until: NullableTimestamp;
  created_at: DefaultTimestamp;
  started_at: NullableTimestamp;
  updated_at: DefaultTimestamp;
  finished_at: NullableTimestamp;
}

export interface PurchasedCodesTable {
  id: string;
  code_request_id: string;
  user_id: string;
  phone_number: string;
  code: string;
  channel: number;
  provider_status: number;
  receive_time: Timestamp;
  created_at: DefaultTimestamp;
}

export interface VoucherDB extends EventTables, IdempotencyTables {
  books: BooksTable;
  codes: CodesTable;
  book_users: BookUsersTable;
  reservations: ReservationsTable;
  redemptions: RedemptionsTable;
  generation_jobs: GenerationJobsTable;
  purchased_codes: PurchasedCodesTable;
}

const initial: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      CREATE TABLE books (
        id text PRIMARY KEY,
        name text NOT NULL,
        description text NOT NULL DEFAULT '',
        discount_percent_bp integer CHECK (discount_percent_bp BETWEEN 1 AND 10000),
        discount_cap_minor bigint CHECK (discount_cap_minor > 0),
        discount_amount_minor bigint CHECK (discount_amount_minor > 0),
        currency text CHECK (currency ~ '^[A-Z]{3}$'),
        minimum_order_minor bigint CHECK (minimum_order_minor >= 0),
        start_at timestamptz,
        end_at timestamptz,
        code_validity_ms bigint CHECK (code_validity_ms >= 60000),
        code_pattern text NOT NULL DEFAULT '',
        uses_per_code integer NOT NULL CHECK (uses_per_code BETWEEN 1 AND 1000),
        max_codes_per_user integer NOT NULL DEFAULT 0 CHECK (max_codes_per_user >= 0),
        max_redemptions_per_user integer NOT NULL DEFAULT 0 CHECK (max_redemptions_per_user >= 0),
        auto_top_up_threshold integer NOT NULL DEFAULT 0 CHECK (auto_top_up_threshold >= 0),
        auto_top_up_batch_size integer NOT NULL DEFAULT 0 CHECK (auto_top_up_batch_size >= 0),
        state text NOT NULL CHECK (state IN ('draft', 'active', 'paused', 'archived')),
        generated_count bigint NOT NULL DEFAULT 0,
        imported_count bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((discount_percent_bp IS NULL) <> (discount_amount_minor IS NULL)),
        CHECK (end_at IS NULL OR start_at IS NULL OR end_at > start_at)
      )`.execute(db);
    await sql`CREATE INDEX books_state ON books (state, id)`.execute(db);

    await sql`
      CREATE TABLE codes (
        id text PRIMARY KEY,
        book_id text NOT NULL REFERENCES books (id),
        code text COLLATE "C" NOT NULL,
        pick integer NOT NULL DEFAULT floor(random() * 2147483647)::integer,
        source smallint NOT NULL CHECK (source IN (1, 2)),
        owner_user_id text,
        grant_id text,
        assigned_at timestamptz,
        use_count integer NOT NULL DEFAULT 0 CHECK (use_count >= 0),
        fence bigint NOT NULL DEFAULT 0,
        lease_expires_at timestamptz,
        last_redeemed_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((owner_user_id IS NULL) = (assigned_at IS NULL)),
        CHECK (grant_id IS NULL OR owner_user_id IS NOT NULL)
      )`.execute(db);
    await sql`CREATE UNIQUE INDEX codes_code ON codes (code)`.execute(db);
    await sql`CREATE UNIQUE INDEX codes_grant ON codes (grant_id) WHERE grant_id IS NOT NULL`.execute(db);
    await sql`CREATE INDEX codes_book_code ON codes (book_id, code)`.execute(db);
    // The only index ordered by pick: claims can only walk free codes of one book.
    await sql`CREATE INDEX codes_free_pick ON codes (book_id, pick) WHERE owner_user_id IS NULL`.execute(db);
    await sql`CREATE INDEX codes_owner ON codes (owner_user_id, assigned_at DESC, id DESC) WHERE owner_user_id IS NOT NULL`.execute(db);
    // Claims and redemptions rewrite rows; keep room on each page for HOT updates.
    await sql`ALTER TABLE codes SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02)`.execute(db);

    await sql`
      CREATE TABLE book_users (
        book_id text NOT NULL REFERENCES books (id),
        user_id text NOT NULL,
        codes_held integer NOT NULL DEFAULT 0 CHECK (codes_held >= 0),
        redemptions integer NOT NULL DEFAULT 0 CHECK (redemptions >= 0),
        PRIMARY KEY (book_id, user_id)
      )`.execute(db);

    await sql`
      CREATE TABLE reservations (
        id text PRIMARY KEY,
        token_hash bytea NOT NULL UNIQUE,
        code_id text NOT NULL REFERENCES codes (id),
        user_id text NOT NULL,
        fence bigint NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        released_at timestamptz,
        used_at timestamptz,
        UNIQUE (code_id, fence)
      )`.execute(db);

    await sql`
      CREATE TABLE redemptions (
        id text PRIMARY KEY,
        code_id text NOT NULL REFERENCES codes (id),
        book_id text NOT NULL REFERENCES books (id),
        user_id text NOT NULL,
        code text COLLATE "C" NOT NULL,
        order_reference text NOT NULL,
        order_minor bigint NOT NULL CHECK (order_minor >= 0),
        currency text NOT NULL,
        discount_minor bigint NOT NULL CHECK (discount_minor >= 0),
        state text NOT NULL CHECK (state IN ('redeemed', 'rolled_back')),
        reservation_id text REFERENCES reservations (id),
        redeemed_at timestamptz NOT NULL DEFAULT now(),
        rolled_back_at timestamptz,
        rollback_reason text,
        CHECK ((state = 'rolled_back') = (rolled_back_at IS NOT NULL))
      )`.execute(db);
    await sql`CREATE INDEX redemptions_book ON redemptions (book_id, id DESC)`.execute(db);
    await sql`CREATE INDEX redemptions_user ON redemptions (user_id, id DESC)`.execute(db);
    await sql`CREATE INDEX redemptions_code ON redemptions (code_id)`.execute(db);
    await sql`CREATE INDEX redemptions_order ON redemptions (order_reference)`.execute(db);
    await sql`CREATE INDEX redemptions_time ON redemptions (redeemed_at)`.execute(db);
    await sql`CREATE INDEX redemptions_rollback_time ON redemptions (rolled_back_at) WHERE rolled_back_at IS NOT NULL`.execute(db);

    await sql`
      CREATE TABLE generation_jobs (
        id text PRIMARY KEY,
        book_id text NOT NULL REFERENCES books (id),
        trigger text NOT NULL CHECK (trigger IN ('book_created', 'manual', 'auto_top_up')),
        state text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
        requested_count integer NOT NULL CHECK (requested_count > 0),
        generated_count integer NOT NULL DEFAULT 0 CHECK (generated_count >= 0 AND generated_count <= requested_count),
        collision_count bigint NOT NULL DEFAULT 0,
        attempt_count integer NOT NULL DEFAULT 0,
        failure_message text NOT NULL DEFAULT '',
        worker text,
        lease_until timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
      )`.execute(db);
    await sql`CREATE INDEX generation_jobs_book ON generation_jobs (book_id, id DESC)`.execute(db);
    await sql`CREATE INDEX generation_jobs_unfinished ON generation_jobs (lease_until) WHERE state IN ('queued', 'running')`.execute(db);
    // The scheduler's "one top-up at a time per book", enforced by the database.
    await sql`CREATE UNIQUE INDEX generation_jobs_one_auto_top_up ON generation_jobs (book_id) WHERE trigger = 'auto_top_up' AND state IN ('queued', 'running')`.execute(db);

    await sql`
      CREATE TABLE purchased_codes (
        id text PRIMARY KEY,
        code_request_id text NOT NULL UNIQUE,
        user_id text NOT NULL,
        phone_number text NOT NULL,
        code text NOT NULL,
        channel smallint NOT NULL,
        provider_status smallint NOT NULL,
        receive_time timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`.execute(db);
    await sql`CREATE INDEX purchased_codes_phone ON purchased_codes (phone_number, id DESC)`.execute(db);
  },
};

export const voucherMigrations: Record<string, Migration> = { "0001_voucher": initial };
