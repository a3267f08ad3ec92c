// The provider's tables (Postgres schema `provider`) and their migrations. The database
// holds the invariants: one code per request (set once, only with a succeeding state), a
// challenge for every acknowledged request, states from the domain's list, and a NOTIFY
// on every change so WatchCodeRequest streams on any replica hear about it.
import { sql, type ColumnType, type Kysely, type Migration } from "kysely";
import type { EventTables } from "../../kit/events/index.js";
import type { IdempotencyTables } from "../../kit/idempotency.js";
import type { Channel, ProviderStatus, RequestState } from "../domain/states.js";

/** NOTIFY channel of code request changes; the payload is the request id. */
export const CHANGES_CHANNEL = "vouch_provider_code_request";

export interface CodeRequestsTable {
  id: string;
  user_id: string;
  phone_number: string;
  channel: Channel;
  state: ColumnType<RequestState, RequestState | undefined, RequestState>;
  status_message: string;
  /** Set exactly once, by the move that received it. */
  code: ColumnType<string | null, never, string>;
  provider_status: ColumnType<ProviderStatus | null, never, ProviderStatus>;
  /** BASE64URL(SHA256(verifier)) from the provider's acknowledgement (S256 only). */
  code_challenge: ColumnType<string | null, never, string>;
  /** SHA-256 of the accepted callback's code and status: an identical replay is answered OK. */
  callback_fingerprint: ColumnType<string | null, never, string>;
  retry_of_id: string | null;
  attempt_count: ColumnType<number, never, number>;
  /** The last provider failure, for operators. */
  last_error: ColumnType<string | null, never, string | null>;
  failure_message: ColumnType<string | null, never, string>;
  /** An SMS telling the customer the request failed or expired is still to be sent. */
  notice_pending: ColumnType<boolean, never, boolean>;
  /** Set by the insert (the same instant its `code_requested` event reports). */
  created_at: ColumnType<Date, Date, never>;
  updated_at: ColumnType<Date, never, Date>;
  acknowledged_at: ColumnType<Date | null, never, Date>;
  received_at: ColumnType<Date | null, never, Date>;
  delivered_at: ColumnType<Date | null, never, Date>;
  expire_at: ColumnType<Date, Date, never>;
}

export interface SentSmsTable {
  id: string;
  phone_number: string;
  body: string;
  code_request_id: string;
  /** code, failed, expired: one message of each purpose per request. */
  purpose: string;
  sent_at: ColumnType<Date, never, never>;
}

export interface ProviderDB extends EventTables, IdempotencyTables {
  code_requests: CodeRequestsTable;
  sent_sms: SentSmsTable;
}

const codeRequests: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      CREATE TABLE code_requests (
        id                   text PRIMARY KEY,
        user_id              text NOT NULL,
        phone_number         text NOT NULL,
        channel              text NOT NULL CHECK (channel IN ('web', 'sms')),
        state                text NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'acknowledged', 'succeeded', 'late_succeeded', 'delivered', 'failed', 'expired')),
        status_message       text NOT NULL,
        code                 text,
        provider_status      text CHECK (provider_status IN ('success', 'late_success')),
        code_challenge       text,
        callback_fingerprint text,
        retry_of_id          text REFERENCES code_requests (id),
        attempt_count        integer NOT NULL DEFAULT 0,
        last_error           text,
        failure_message      text,
        notice_pending       boolean NOT NULL DEFAULT false,
        created_at           timestamptz NOT NULL DEFAULT now(),
        updated_at           timestamptz NOT NULL DEFAULT now(),
        acknowledged_at      timestamptz,
        received_at          timestamptz,
        delivered_at         timestamptz,
        expire_at            timestamptz NOT NULL,
        -- A succeeding state has its code and how it came; nothing else may carry one
        -- except a FAILED request whose code could not be delivered.
        CONSTRAINT code_with_success CHECK (
          state NOT IN ('succeeded', 'late_succeeded', 'delivered')
          OR (code IS NOT NULL AND provider_status IS NOT NULL AND received_at IS NOT NULL)
        ),
        CONSTRAINT code_only_when_received CHECK (code IS NULL OR state IN ('succeeded', 'late_succeeded', 'delivered', 'failed')),
        CONSTRAINT acknowledged_has_challenge CHECK (state <> 'acknowledged' OR code_challenge IS NOT NULL)
      )`.execute(db);
    // The sweep's only path to overdue requests.
    await sql`CREATE INDEX code_requests_open_by_deadline ON code_requests (expire_at) WHERE state IN ('pending', 'acknowledged')`.execute(db);
    await sql`CREATE INDEX code_requests_notice_pending ON code_requests (updated_at) WHERE notice_pending`.execute(db);
    // Lists, newest first (ids are UUIDv7, so id order is creation order).
    await sql`CREATE INDEX code_requests_by_state ON code_requests (state, id DESC)`.execute(db);
    await sql`CREATE INDEX code_requests_by_user ON code_requests (user_id, id DESC)`.execute(db);
    await sql`CREATE INDEX code_requests_by_phone ON code_requests (phone_number, id DESC)`.execute(db);

    // Every change wakes the watchers of that request, on whichever replica they are. The
    // NOTIFY is transactional: sent on commit, never for a rolled-back change.
    await sql`
      CREATE FUNCTION notify_code_request_change() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify(${sql.lit(CHANGES_CHANNEL)}, NEW.id);
        RETURN NEW;
      END $$`.execute(db);
    await sql`
      CREATE TRIGGER code_request_changed AFTER UPDATE ON code_requests
      FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION notify_code_request_change()`.execute(db);

    await sql`
      CREATE TABLE sent_sms (
        id              text PRIMARY KEY,
        phone_number    text NOT NULL,
        body            text NOT NULL,
        code_request_id text NOT NULL REFERENCES code_requests (id),
        purpose         text NOT NULL,
        sent_at         timestamptz NOT NULL DEFAULT now(),
        UNIQUE (code_request_id, purpose)
      )`.execute(db);
    await sql`CREATE INDEX sent_sms_by_phone ON sent_sms (phone_number, id DESC)`.execute(db);
  },
};

/** After the kit's "0000_events" (outbox, inbox, dead letters) and "0000_idempotency" (request ids). */
export const providerMigrations: Record<string, Migration> = {
  "0001_code_requests": codeRequests,
};
