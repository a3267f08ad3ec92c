// Auth's tables (Postgres schema `auth`) and their migrations. Every limit that matters
// is the database's: uniqueness of each identifier, one active and one next signing key,
// one first login per user (a conditional update), one rotation per refresh token
// (a conditional update under the session's row lock).
import { sql, type ColumnType, type Generated, type Kysely, type Migration } from "kysely";
import type { EventTables } from "../../kit/events/index.js";
import type { IdempotencyTables } from "../../kit/idempotency.js";

export interface UsersTable {
  id: string;
  full_name: string;
  /** As typed, for display. */
  username: string;
  /** lower(username): uniqueness and login. */
  username_key: string;
  /** Lower-cased. */
  email: string;
  /** E.164. */
  phone_number: string;
  /** A DATE; read it as text ("YYYY-MM-DD") through `userColumns`, never as a JS Date (time zones). */
  birthday: ColumnType<string | null, string | null, string | null>;
  /** argon2id PHC string. */
  password_hash: string;
  /** "CUSTOMER", "ADMIN". */
  roles: ColumnType<string[], string[] | undefined, string[]>;
  created_at: ColumnType<Date, never, never>;
  updated_at: ColumnType<Date, never, Date>;
  first_login_at: ColumnType<Date | null, never, Date | null>;
  last_login_at: ColumnType<Date | null, never, Date | null>;
  /** Access tokens of this user issued before this instant are refused (mirrored to Redis). */
  tokens_revoked_before: ColumnType<Date | null, never, Date | null>;
}

/** A session is a refresh-token family: everything descended from one login. */
export interface SessionsTable {
  id: string;
  user_id: string;
  created_at: ColumnType<Date, never, never>;
  last_used_at: ColumnType<Date, Date, Date>;
  /** min(last use + idle lifetime, expires_at). */
  idle_expires_at: ColumnType<Date, Date, Date>;
  /** Absolute expiry: login + absolute lifetime. Never extended. */
  expires_at: ColumnType<Date, Date, never>;
  revoked_at: ColumnType<Date | null, never, Date | null>;
  /** logout, password_changed, refresh_token_reused, expired. */
  revoke_reason: ColumnType<string | null, never, string | null>;
}

export interface RefreshTokensTable {
  /** SHA-256 of the token: the token itself is never stored. */
  token_hash: Uint8Array;
  session_id: string;
  created_at: ColumnType<Date, never, never>;
  /** Set when the token was exchanged; presenting it again revokes the session. */
  rotated_at: ColumnType<Date | null, never, Date | null>;
}

export interface SigningKeysTable {
  kid: string;
  algorithm: string;
  /** The public JWK (kty, crv, x, …) without kid/alg/use. */
  public_jwk: ColumnType<Record<string, string>, string, never>;
  /** PKCS#8 DER of the private key, AES-256-GCM encrypted (iv ‖ tag ‖ ciphertext). */
  private_key_encrypted: ColumnType<Uint8Array, Uint8Array, never>;
  created_at: ColumnType<Date, never, never>;
  /** Null while the key is only published (in the JWKS, not yet signing). */
  activated_at: ColumnType<Date | null, never, Date | null>;
  /** Null while active; set when replaced: the key leaves the JWKS at this instant. */
  retire_at: ColumnType<Date | null, never, Date | null>;
}

/** Request ids (AIP-155) live in the kit's `idempotency_keys` (added by `startPlatform`). */
export interface AuthDB extends EventTables, IdempotencyTables {
  users: UsersTable;
  sessions: SessionsTable;
  refresh_tokens: RefreshTokensTable;
  signing_keys: SigningKeysTable;
}

export type AuthDb = Kysely<AuthDB>;

export const authMigrations: Record<string, Migration> = {
  "0001_users": {
    async up(db: Kysely<any>) {
      await sql`
        CREATE TABLE users (
          id text PRIMARY KEY,
          full_name text NOT NULL,
          username text NOT NULL,
          username_key text NOT NULL CONSTRAINT users_username_unique UNIQUE,
          email text NOT NULL CONSTRAINT users_email_unique UNIQUE,
          phone_number text NOT NULL CONSTRAINT users_phone_number_unique UNIQUE,
          birthday date,
          password_hash text NOT NULL,
          roles text[] NOT NULL DEFAULT '{CUSTOMER}',
          created_at timestamptz NOT NULL DEFAULT now(),
          updated_at timestamptz NOT NULL DEFAULT now(),
          first_login_at timestamptz,
          last_login_at timestamptz,
          tokens_revoked_before timestamptz,
          -- The normal forms are the application's, but the database refuses to store
          -- two spellings of one identifier.
          CONSTRAINT users_username_key_is_lower CHECK (username_key = lower(username)),
          CONSTRAINT users_email_is_lower CHECK (email = lower(email)),
          CONSTRAINT users_phone_number_is_e164 CHECK (phone_number ~ '^\\+[1-9][0-9]{6,14}$'),
          CONSTRAINT users_roles_known CHECK (roles <@ ARRAY['CUSTOMER', 'ADMIN']::text[])
        )`.execute(db);
      await sql`CREATE INDEX users_admins ON users (id) WHERE 'ADMIN' = ANY (roles)`.execute(db);
      await sql`CREATE INDEX users_recent_revocations ON users (tokens_revoked_before) WHERE tokens_revoked_before IS NOT NULL`.execute(db);
    },
  },
  "0002_sessions": {
    async up(db: Kysely<any>) {
      await sql`
        CREATE TABLE sessions (
          id text PRIMARY KEY,
          user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
          created_at timestamptz NOT NULL DEFAULT now(),
          last_used_at timestamptz NOT NULL,
          idle_expires_at timestamptz NOT NULL,
          expires_at timestamptz NOT NULL,
          revoked_at timestamptz,
          revoke_reason text,
          CONSTRAINT sessions_idle_within_absolute CHECK (idle_expires_at <= expires_at)
        )`.execute(db);
      await sql`CREATE INDEX sessions_user_live ON sessions (user_id) WHERE revoked_at IS NULL`.execute(db);
      await sql`CREATE INDEX sessions_expires_at ON sessions (expires_at)`.execute(db);
      await sql`
        CREATE TABLE refresh_tokens (
          token_hash bytea PRIMARY KEY CONSTRAINT refresh_tokens_hash_length CHECK (length(token_hash) = 32),
          session_id text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
          created_at timestamptz NOT NULL DEFAULT now(),
          rotated_at timestamptz
        )`.execute(db);
      await sql`CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id)`.execute(db);
    },
  },
  "0003_signing_keys": {
    async up(db: Kysely<any>) {
      await sql`
        CREATE TABLE signing_keys (
          kid text PRIMARY KEY,
          algorithm text NOT NULL,
          public_jwk jsonb NOT NULL,
          private_key_encrypted bytea NOT NULL,
          created_at timestamptz NOT NULL DEFAULT now(),
          activated_at timestamptz,
          retire_at timestamptz,
          CONSTRAINT signing_keys_retired_after_active CHECK (retire_at IS NULL OR activated_at IS NOT NULL)
        )`.execute(db);
      // At most one key signs, and at most one waits to sign next.
      await sql`CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE activated_at IS NOT NULL AND retire_at IS NULL`.execute(db);
      await sql`CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys ((true)) WHERE activated_at IS NULL`.execute(db);
    },
  },
};
