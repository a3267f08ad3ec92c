// The promotion schema: campaigns, grants and top-up orders, plus the kit's outbox/inbox
// and request-id tables. Limits live here, not in application code:
//   - `campaigns_granted_within_quota` (0 ≤ granted ≤ quota) backs the conditional
//     `UPDATE … SET granted = granted + 1 WHERE granted < quota` that takes a slot;
//   - `grants_campaign_user` makes a grant unique per (campaign, user);
//   - `top_ups_reference` makes transfer references unique, `top_ups_user_request` and
//     `top_ups_confirm_request` make CreateTopUp and ConfirmTransfer idempotent.
import { sql, type ColumnType, type Generated, type Kysely, type Migration } from "kysely";
import type { EventTables } from "../../kit/events/index.js";
import { idempotencyMigration, type IdempotencyTables } from "../../kit/idempotency.js";

/** pg returns int8 as a string; stores convert to bigint at their boundary. */
type Int8 = ColumnType<string, string | bigint, string | bigint>;
type Timestamp = ColumnType<Date, Date | string, Date | string>;

export type CampaignTypeValue = "first_login" | "claim";
export type CampaignStateValue = "draft" | "active" | "paused" | "ended";
export type GrantStateValue = "pending_voucher" | "issued";
export type TopUpStateValue = "awaiting_transfer" | "processing" | "completed" | "expired" | "cancelled" | "failed";

/** The voucher's discount as stored (minor units as strings: jsonb has no int64). */
export type StoredDiscount =
  | { kind: "percent"; basisPoints: number; capMinor?: string; capCurrency?: string }
  | { kind: "amount"; minor: string; currency: string };

export interface CampaignTable {
  id: string;
  name: string;
  description: string;
  type: CampaignTypeValue;
  quota: number;
  granted: Generated<number>;
  state: Generated<CampaignStateValue>;
  discount: ColumnType<StoredDiscount, string, string>;
  minimum_minor: Int8 | null;
  minimum_currency: string | null;
  validity_days: number;
  code_pattern: string;
  start_at: Timestamp | null;
  end_at: Timestamp | null;
  /** First activation: a first-login campaign without start time counts logins from then. */
  activated_at: Timestamp | null;
  book_id: string;
  created_at: ColumnType<Date, never, never>;
  updated_at: ColumnType<Date, never, Date | string>;
}

export interface GrantTable {
  id: string;
  campaign_id: string;
  user_id: string;
  state: Generated<GrantStateValue>;
  voucher_id: string | null;
  created_at: ColumnType<Date, never, never>;
  issued_at: Timestamp | null;
  /** Issuance attempts that failed (event redeliveries and sweeps), for operators. */
  issue_failures: Generated<number>;
  last_issue_error: string | null;
}

export interface TopUpTable {
  id: string;
  user_id: string;
  request_id: string;
  /** Hash of the CreateTopUp request without its request_id. */
  request_fingerprint: string;
  phone_number: string;
  amount_minor: Int8;
  currency: string;
  voucher_code: string | null;
  voucher_id: string | null;
  reservation_token: string | null;
  discount_minor: Int8 | null;
  pay_minor: Int8;
  reference: string;
  deadline_at: Timestamp;
  state: TopUpStateValue;
  confirm_request_id: string | null;
  confirm_fingerprint: string | null;
  redemption_id: string | null;
  operator_reference: string | null;
  failure_message: string | null;
  /** The reservation still has to be released (expired or cancelled order); the sweep retries until done. */
  release_pending: Generated<boolean>;
  created_at: ColumnType<Date, never, never>;
  updated_at: ColumnType<Date, never, Date | string>;
  confirmed_at: Timestamp | null;
  finished_at: Timestamp | null;
}

export interface PromotionDB extends EventTables, IdempotencyTables {
  campaigns: CampaignTable;
  grants: GrantTable;
  top_ups: TopUpTable;
}

const initial: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      CREATE TABLE campaigns (
        id text PRIMARY KEY,
        name text NOT NULL,
        description text NOT NULL DEFAULT '',
        type text NOT NULL CHECK (type IN ('first_login', 'claim')),
        quota integer NOT NULL CHECK (quota BETWEEN 1 AND 10000000),
        granted integer NOT NULL DEFAULT 0,
        state text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'active', 'paused', 'ended')),
        discount jsonb NOT NULL,
        minimum_minor bigint,
        minimum_currency text,
        validity_days integer NOT NULL CHECK (validity_days BETWEEN 1 AND 3650),
        code_pattern text NOT NULL,
        start_at timestamptz,
        end_at timestamptz,
        activated_at timestamptz,
        book_id text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT campaigns_granted_within_quota CHECK (granted >= 0 AND granted <= quota),
        CONSTRAINT campaigns_window CHECK (start_at IS NULL OR end_at IS NULL OR end_at > start_at)
      )`.execute(db);
    // What a first login scans: the few campaigns that can still grant.
    await sql`CREATE INDEX campaigns_open ON campaigns (type) WHERE state = 'active'`.execute(db);
    await sql`CREATE INDEX campaigns_public ON campaigns ((coalesce(end_at, 'infinity'::timestamptz)), id) WHERE state = 'active'`.execute(db);
    await sql`CREATE INDEX campaigns_state ON campaigns (state, id DESC)`.execute(db);

    await sql`
      CREATE TABLE grants (
        id text PRIMARY KEY,
        campaign_id text NOT NULL REFERENCES campaigns (id),
        user_id text NOT NULL,
        state text NOT NULL DEFAULT 'pending_voucher' CHECK (state IN ('pending_voucher', 'issued')),
        voucher_id text,
        created_at timestamptz NOT NULL DEFAULT now(),
        issued_at timestamptz,
        issue_failures integer NOT NULL DEFAULT 0,
        last_issue_error text,
        CONSTRAINT grants_campaign_user UNIQUE (campaign_id, user_id),
        CONSTRAINT grants_issued_has_voucher CHECK (state <> 'issued' OR (voucher_id IS NOT NULL AND issued_at IS NOT NULL))
      )`.execute(db);
    await sql`CREATE INDEX grants_user ON grants (user_id, id DESC)`.execute(db);
    await sql`CREATE INDEX grants_campaign ON grants (campaign_id, id DESC)`.execute(db);
    await sql`CREATE INDEX grants_pending ON grants (created_at) WHERE state = 'pending_voucher'`.execute(db);
    await sql`CREATE UNIQUE INDEX grants_voucher ON grants (voucher_id) WHERE voucher_id IS NOT NULL`.execute(db);

    await sql`
      CREATE TABLE top_ups (
        id text PRIMARY KEY,
        user_id text NOT NULL,
        request_id text NOT NULL,
        request_fingerprint text NOT NULL,
        phone_number text NOT NULL,
        amount_minor bigint NOT NULL CHECK (amount_minor > 0),
        currency text NOT NULL,
        voucher_code text,
        voucher_id text,
        reservation_token text,
        discount_minor bigint CHECK (discount_minor >= 0),
        pay_minor bigint NOT NULL CHECK (pay_minor >= 0),
        reference text NOT NULL,
        deadline_at timestamptz NOT NULL,
        state text NOT NULL CHECK (state IN ('awaiting_transfer', 'processing', 'completed', 'expired', 'cancelled', 'failed')),
        confirm_request_id text,
        confirm_fingerprint text,
        redemption_id text,
        operator_reference text,
        failure_message text,
        release_pending boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        confirmed_at timestamptz,
        finished_at timestamptz,
        CONSTRAINT top_ups_reference UNIQUE (reference),
        CONSTRAINT top_ups_user_request UNIQUE (user_id, request_id),
        CONSTRAINT top_ups_pay_is_amount_less_discount CHECK (pay_minor = amount_minor - coalesce(discount_minor, 0)),
        CONSTRAINT top_ups_voucher_reserved CHECK (voucher_code IS NULL OR reservation_token IS NOT NULL),
        CONSTRAINT top_ups_paid_has_confirmation CHECK (state NOT IN ('processing', 'completed', 'failed') OR confirm_request_id IS NOT NULL)
      )`.execute(db);
    // One bank transaction confirms one order.
    await sql`CREATE UNIQUE INDEX top_ups_confirm_request ON top_ups (confirm_request_id) WHERE confirm_request_id IS NOT NULL`.execute(db);
    // A voucher pays for one live order at a time (the reservation already ensures it; this is the backstop).
    await sql`CREATE UNIQUE INDEX top_ups_voucher_live ON top_ups (voucher_id) WHERE voucher_id IS NOT NULL AND state IN ('awaiting_transfer', 'processing')`.execute(db);
    await sql`CREATE INDEX top_ups_user ON top_ups (user_id, id DESC)`.execute(db);
    await sql`CREATE INDEX top_ups_state ON top_ups (state, id DESC)`.execute(db);
    await sql`CREATE INDEX top_ups_phone ON top_ups (phone_number, id DESC)`.execute(db);
    await sql`CREATE INDEX top_ups_overdue ON top_ups (deadline_at) WHERE state = 'awaiting_transfer'`.execute(db);
    await sql`CREATE INDEX top_ups_unfinished ON top_ups (updated_at) WHERE state = 'processing' OR release_pending`.execute(db);
  },
};

export const promotionMigrations: Record<string, Migration> = {
  "0001_idempotency": idempotencyMigration,
  "0002_promotion": initial,
};
