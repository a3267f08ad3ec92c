// Users: accounts, password hashes, roles, login bookkeeping. Functions take the kysely
// instance or a transaction; they return plain rows, never protocol types.
import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler, sql, type Transaction } from "kysely";
import { executePrepared } from "../../kit/db.js";
import { alreadyExists } from "../../kit/errors.js";
import { newId } from "../../kit/ids.js";
import { advisoryLockKey } from "../../kit/migrate.js";
import type { IdentifierKind } from "../domain/identifiers.js";
import type { Profile } from "../domain/profile.js";
import type { AuthDB } from "./schema.js";

type Db = Kysely<AuthDB> | Transaction<AuthDB>;

export interface UserRow {
  id: string;
  fullName: string;
  username: string;
  email: string;
  phoneNumber: string;
  birthday: string | null;
  roles: string[];
  createdAt: Date;
  updatedAt: Date;
  firstLoginAt: Date | null;
  lastLoginAt: Date | null;
}

export interface UserWithHash extends UserRow {
  passwordHash: string;
}

const userColumns = [
  "id",
  "full_name as fullName",
  "username",
  "email",
  "phone_number as phoneNumber",
  sql<string | null>`to_char(birthday, 'YYYY-MM-DD')`.as("birthday"),
  "roles",
  "created_at as createdAt",
  "updated_at as updatedAt",
  "first_login_at as firstLoginAt",
  "last_login_at as lastLoginAt",
] as const;

// Unique constraint → the field and reason the caller is told about.
const TAKEN: Record<string, [field: string, reason: string, what: string]> = {
  users_username_unique: ["username", "USERNAME_TAKEN", "username"],
  users_email_unique: ["email", "EMAIL_TAKEN", "email address"],
  users_phone_number_unique: ["phone_number", "PHONE_NUMBER_TAKEN", "phone number"],
};

/** Turns a unique violation on an identifier into ALREADY_EXISTS naming the field; rethrows anything else. */
function rethrowTaken(err: unknown): never {
  const pgErr = err as { code?: string; constraint?: string };
  const taken = pgErr.code === "23505" && pgErr.constraint ? TAKEN[pgErr.constraint] : undefined;
  if (taken) {
    const [field, reason, what] = taken;
    throw alreadyExists(reason, `this ${what} is already used by another account`, { field });
  }
  throw err;
}

export async function insertUser(trx: Db, profile: Profile, passwordHash: string, roles: string[] = ["CUSTOMER"]): Promise<UserRow> {
  try {
    return await trx
      .insertInto("users")
      .values({
        id: newId(),
        full_name: profile.fullName,
        username: profile.username,
        username_key: profile.usernameKey,
        email: profile.email,
        phone_number: profile.phoneNumber,
        birthday: profile.birthday,
        password_hash: passwordHash,
        roles,
      })
      .returning(userColumns)
      .executeTakeFirstOrThrow();
  } catch (err) {
    rethrowTaken(err);
  }
}

const IDENTIFIER_COLUMN = { email: "email", phone: "phone_number", username: "username_key" } as const;

/**
 * `userColumns` as SQL text, for raw statements (sessions' login statement): compiled once
 * from the same list, so the two cannot drift apart. (Building that six-part statement with
 * the query builder instead costs ~150 µs per login.)
 */
export const USER_COLUMNS_SQL = (() => {
  const compiler = new Kysely<AuthDB>({
    dialect: {
      createAdapter: () => new PostgresAdapter(),
      createDriver: () => new DummyDriver(),
      createIntrospector: (db) => new PostgresIntrospector(db),
      createQueryCompiler: () => new PostgresQueryCompiler(),
    },
  });
  const { sql: text, parameters } = compiler.selectFrom("users").select(userColumns).compile();
  const list = /^select (.+) from "users"$/.exec(text)?.[1];
  if (!list || parameters.length > 0) throw new Error(`userColumns did not compile to a plain column list: ${text}`);
  return sql.raw(list);
})();

/** Prepared (one text per kind of identifier): every login runs it. */
export async function findUserByIdentifier(db: Db, kind: IdentifierKind, value: string): Promise<UserWithHash | undefined> {
  const [user] = await executePrepared(
    db,
    db.selectFrom("users").select([...userColumns, "password_hash as passwordHash"]).where(IDENTIFIER_COLUMN[kind], "=", value),
  );
  return user;
}

export function getUser(db: Db, id: string): Promise<UserRow | undefined> {
  return db.selectFrom("users").select(userColumns).where("id", "=", id).executeTakeFirst();
}

export function getUserWithHash(db: Db, id: string): Promise<UserWithHash | undefined> {
  return db.selectFrom("users").select([...userColumns, "password_hash as passwordHash"]).where("id", "=", id).executeTakeFirst();
}

/** Replaces the hash only if it is still the one that was verified (a concurrent password change wins). */
export async function rehashPassword(trx: Db, userId: string, verifiedHash: string, newHash: string): Promise<boolean> {
  const res = await trx
    .updateTable("users")
    .set({ password_hash: newHash })
    .where("id", "=", userId)
    .where("password_hash", "=", verifiedHash)
    .executeTakeFirst();
  return res.numUpdatedRows > 0n;
}

/** Sets a new password hash and the token cutoff; false when the hash changed since it was verified. */
export async function changePasswordHash(trx: Db, userId: string, verifiedHash: string, newHash: string, tokensRevokedBefore: Date): Promise<boolean> {
  const res = await trx
    .updateTable("users")
    .set({ password_hash: newHash, tokens_revoked_before: latestCutoff(tokensRevokedBefore), updated_at: sql`now()` })
    .where("id", "=", userId)
    .where("password_hash", "=", verifiedHash)
    .executeTakeFirst();
  return res.numUpdatedRows > 0n;
}

export async function updateProfile(trx: Db, userId: string, changes: Partial<Profile>): Promise<UserRow | undefined> {
  const set: Record<string, unknown> = {};
  if (changes.fullName !== undefined) set.full_name = changes.fullName;
  if (changes.username !== undefined) {
    set.username = changes.username;
    set.username_key = changes.usernameKey;
  }
  if (changes.email !== undefined) set.email = changes.email;
  if (changes.phoneNumber !== undefined) set.phone_number = changes.phoneNumber;
  if (changes.birthday !== undefined) set.birthday = changes.birthday;
  try {
    return await trx
      .updateTable("users")
      .set({ ...set, updated_at: sql`now()` })
      .where("id", "=", userId)
      .returning(userColumns)
      .executeTakeFirst();
  } catch (err) {
    rethrowTaken(err);
  }
}

export async function addRole(trx: Db, userId: string, role: string): Promise<UserRow | undefined> {
  const changed = await trx
    .updateTable("users")
    .set({ roles: sql`array_append(roles, ${role})`, updated_at: sql`now()` })
    .where("id", "=", userId)
    .where(sql<boolean>`NOT (${role} = ANY (roles))`)
    .returning(userColumns)
    .executeTakeFirst();
  return changed ?? getUser(trx, userId);
}

/** Removes a role and voids the user's access tokens issued before `revokedBefore` (they carry the role). */
export async function removeRole(trx: Db, userId: string, role: string, revokedBefore: Date): Promise<{ user: UserRow; changed: boolean } | undefined> {
  const changed = await trx
    .updateTable("users")
    .set({ roles: sql`array_remove(roles, ${role})`, updated_at: sql`now()`, tokens_revoked_before: latestCutoff(revokedBefore) })
    .where("id", "=", userId)
    .where(sql<boolean>`${role} = ANY (roles)`)
    .returning(userColumns)
    .executeTakeFirst();
  if (changed) return { user: changed, changed: true };
  const user = await getUser(trx, userId);
  return user && { user, changed: false };
}

/**
 * Runs `fn` in a transaction holding the role lock: role changes (and the admin bootstrap)
 * run one at a time, so "at least one admin" and "one bootstrapped admin" hold under any
 * concurrency, across replicas.
 */
export function withRoleLock<T>(db: Kysely<AuthDB>, fn: (trx: Transaction<AuthDB>) => Promise<T>): Promise<T> {
  return db.transaction().execute(async (trx) => {
    await sql`SELECT pg_advisory_xact_lock(${advisoryLockKey("vouch.auth.roles")}::bigint)`.execute(trx);
    return fn(trx);
  });
}

export async function countUsersWithRole(trx: Db, role: string): Promise<number> {
  const row = await trx
    .selectFrom("users")
    .select((eb) => eb.fn.countAll<string>().as("n"))
    .where(sql<boolean>`${role} = ANY (roles)`)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

export interface UserSearch {
  /** Lower-cased search text; empty for all users. */
  query: string;
  role: string | undefined;
  /** Return users created before this id (ids are UUIDv7: time-ordered). */
  beforeId: string | undefined;
  limit: number;
}

/** A token cutoff never moves backwards (GREATEST ignores NULL). */
const latestCutoff = (cutoff: Date) => sql<Date>`GREATEST(tokens_revoked_before, ${cutoff})`;

const likePrefix = (text: string) => `${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

/** Newest first; matches a prefix of the username, email or phone number, or of any word of the full name. */
export function searchUsers(db: Db, search: UserSearch): Promise<UserRow[]> {
  let q = db.selectFrom("users").select(userColumns).orderBy("id", "desc").limit(search.limit);
  if (search.beforeId) q = q.where("id", "<", search.beforeId);
  if (search.role) q = q.where(sql<boolean>`${search.role} = ANY (roles)`);
  if (search.query) {
    const prefix = likePrefix(search.query);
    q = q.where((eb) =>
      eb.or([
        eb("username_key", "like", prefix),
        eb("email", "like", prefix),
        eb("phone_number", "like", prefix),
        eb(sql`lower(full_name)`, "like", prefix),
        eb(sql`lower(full_name)`, "like", `% ${prefix}`),
      ]),
    );
  }
  return q.execute();
}

/** Users whose tokens were revoked after `since`, to write their cutoffs back to Redis. */
export function recentRevocations(db: Db, since: Date): Promise<{ id: string; cutoff: Date }[]> {
  return db
    .selectFrom("users")
    .select(["id", "tokens_revoked_before as cutoff"])
    .where("tokens_revoked_before", ">", since)
    .execute() as Promise<{ id: string; cutoff: Date }[]>;
}
