// Signing keys at rest. Lifecycle (derived from two timestamps, never stored as a state):
//   published  activated_at NULL            in the JWKS, not signing yet
//   active     activated_at set, retire_at NULL   signs new tokens (at most one: unique index)
//   retiring   retire_at in the future       in the JWKS, verifying what it signed
//   retired    retire_at in the past         gone from the JWKS
// Changes go through `withKeyLock`, a transaction-scoped advisory lock, so replicas that
// start or rotate together never race (the unique indexes would refuse a race anyway).
import { sql, type Kysely, type Transaction } from "kysely";
import { advisoryLockKey } from "../../kit/migrate.js";
import type { AuthDB } from "./schema.js";

export interface StoredKey {
  kid: string;
  algorithm: string;
  publicJwk: Record<string, string>;
  privateKeyEncrypted: Uint8Array;
  createdAt: Date;
  activatedAt: Date | null;
  retireAt: Date | null;
}

const columns = [
  "kid",
  "algorithm",
  "public_jwk as publicJwk",
  "private_key_encrypted as privateKeyEncrypted",
  "created_at as createdAt",
  "activated_at as activatedAt",
  "retire_at as retireAt",
] as const;

export async function withKeyLock<T>(db: Kysely<AuthDB>, fn: (trx: Transaction<AuthDB>) => Promise<T>): Promise<T> {
  return db.transaction().execute(async (trx) => {
    await sql`SELECT pg_advisory_xact_lock(${advisoryLockKey("vouch.auth.signing_keys")}::bigint)`.execute(trx);
    return fn(trx);
  });
}

/** Every key not yet retired at the database's `now()`: what the JWKS and the signer need. */
export function liveKeys(db: Kysely<AuthDB> | Transaction<AuthDB>): Promise<StoredKey[]> {
  return db
    .selectFrom("signing_keys")
    .select(columns)
    .where((eb) => eb.or([eb("retire_at", "is", null), eb("retire_at", ">", sql<Date>`now()`)]))
    .orderBy("kid", "desc")
    .execute();
}

/** Newest first (kids are UUIDv7), starting after `afterKid`. */
export function listKeys(db: Kysely<AuthDB>, afterKid: string | undefined, limit: number): Promise<StoredKey[]> {
  let q = db.selectFrom("signing_keys").select(columns).orderBy("kid", "desc").limit(limit);
  if (afterKid) q = q.where("kid", "<", afterKid);
  return q.execute();
}

export async function insertKey(trx: Transaction<AuthDB>, key: Pick<StoredKey, "kid" | "algorithm" | "publicJwk" | "privateKeyEncrypted">): Promise<void> {
  await trx
    .insertInto("signing_keys")
    .values({ kid: key.kid, algorithm: key.algorithm, public_jwk: JSON.stringify(key.publicJwk), private_key_encrypted: key.privateKeyEncrypted })
    .execute();
}

export async function activateKey(trx: Transaction<AuthDB>, kid: string): Promise<void> {
  await trx.updateTable("signing_keys").set({ activated_at: sql`now()` }).where("kid", "=", kid).where("activated_at", "is", null).execute();
}

export async function retireKey(trx: Transaction<AuthDB>, kid: string, afterMs: number): Promise<void> {
  await trx
    .updateTable("signing_keys")
    .set({ retire_at: sql`now() + make_interval(secs => ${afterMs / 1000})` })
    .where("kid", "=", kid)
    .where("retire_at", "is", null)
    .execute();
}

export function getKey(db: Kysely<AuthDB> | Transaction<AuthDB>, kid: string): Promise<StoredKey | undefined> {
  return db.selectFrom("signing_keys").select(columns).where("kid", "=", kid).executeTakeFirst();
}
