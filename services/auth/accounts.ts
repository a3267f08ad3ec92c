// What the auth service does, in domain terms: register, sign in, refresh, sign out,
// change passwords, manage profiles and roles, issue service tokens. No protocol types
// (the handlers translate), no SQL (the stores hold it).
import { createHash, timingSafeEqual } from "node:crypto";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Kysely } from "kysely";
import {
  Code,
  VouchError,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  unauthenticated,
  unavailable,
  type FieldViolation,
} from "../kit/errors.js";
import { outboxRow } from "../kit/events/index.js";
import { fingerprintOf, requestIdReused, requestIdViolation, runOnce } from "../kit/idempotency.js";
import type { Logger } from "../kit/log.js";
import type { Redis } from "../kit/redis.js";
import { revokeTokensIssuedBefore } from "../kit/revocation.js";
import { UserLoggedInSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { classifyIdentifier } from "./domain/identifiers.js";
import { validateProfileUpdate, validateRegistration, type ProfileInput } from "./domain/profile.js";
import { createDummyHash, hashPassword, needsRehash, normalizePassword, passwordViolation, verifyPassword } from "./passwords.js";
import type { AuthSettings } from "./settings.js";
import type { AuthDB } from "./store/schema.js";
import { createSession, recordLoginAndStartSession, revokeSession, revokeUserSessions, rotateRefreshToken, sessionOfToken, type SessionLifetimes } from "./store/sessions.js";
import * as users from "./store/users.js";
import type { UserRow } from "./store/users.js";
import { identifierKey, ipKey, type Throttles } from "./throttle.js";
import { hashRefreshToken, issueAccessToken, newRefreshToken, type IssuedAccessToken, type TokenIssuer } from "./tokens.js";

export type { UserRow };

/** Subject of the login event, relative to the stream prefix (the relay adds `vouch.`). */
export const USER_LOGGED_IN_SUBJECT = "auth.user_logged_in";

export interface AccountsDeps {
  db: Kysely<AuthDB>;
  redis: Redis;
  tokens: TokenIssuer;
  throttles: Throttles;
  settings: AuthSettings;
  log: Logger;
}

export interface SessionTokens {
  access: IssuedAccessToken;
  refreshToken: string;
  refreshExpiresAt: Date;
}

export interface LoginResult extends SessionTokens {
  user: UserRow;
  firstLogin: boolean;
}

/** The one answer for an unknown identifier and a wrong password: nothing tells them apart. */
const invalidCredentials = () => unauthenticated("INVALID_CREDENTIALS", "the identifier or the password is incorrect");
const refreshTokenInvalid = () => unauthenticated("REFRESH_TOKEN_INVALID", "the refresh token is not valid; log in again");

/** Longer inputs are not passwords; they are refused without spending a hash on them. */
const MAX_PASSWORD_INPUT = 1024;
const ADMIN = "ADMIN";

const sha256 = (text: string) => createHash("sha256").update(text).digest();

export class Accounts {
  private readonly dummyHash: Promise<string>;
  private readonly lifetimes: SessionLifetimes;
  private readonly serviceSecrets: Map<string, Buffer>;

  constructor(private readonly deps: AccountsDeps) {
    this.dummyHash = createDummyHash();
    this.lifetimes = { idleTtlMs: deps.settings.sessionIdleTtlMs, absoluteTtlMs: deps.settings.sessionAbsoluteTtlMs };
    this.serviceSecrets = new Map([...deps.settings.serviceClients].map(([id, secret]) => [id, sha256(secret)]));
  }

  /** Resolves once the dummy hash for unknown identifiers is ready. */
  ready(): Promise<unknown> {
    return this.dummyHash;
  }

  // ── Registration and profile ─────────────────────────────────────────────────────────

  async register(input: ProfileInput & { password: string; requestId: string }, clientIp: string): Promise<UserRow> {
    await this.deps.throttles.registerIp.enforce(ipKey(clientIp), "RATE_LIMITED");
    const validated = validateRegistration(input);
    const violations: FieldViolation[] = validated.ok ? [] : [...validated.violations];
    const badRequestId = requestIdViolation(input.requestId);
    if (badRequestId) violations.push(badRequestId);
    if (!validated.ok || violations.length) throw invalidArgument(violations);
    const profile = validated.value;
    const passwordHash = await hashPassword(input.password);
    // The fingerprint leaves the password out (a fast hash of it would be a weak password
    // hash); a replay proves the password by verifying it against the stored hash instead.
    const outcome = await runOnce(
      this.deps.db,
      {
        // Register is public: the id is scoped to the operation, not to a caller.
        key: { operation: "register", requestId: input.requestId, caller: "", fingerprint: fingerprintOf(profile) },
        encode: (user: UserRow) => new TextEncoder().encode(user.id),
      },
      (trx) => users.insertUser(trx, profile, passwordHash),
    );
    if ("result" in outcome) {
      this.deps.log.info({ userId: outcome.result.id }, "user registered");
      return outcome.result;
    }
    const user = await users.getUserWithHash(this.deps.db, new TextDecoder().decode(outcome.replay));
    if (user && (await verifyPassword(user.passwordHash, input.password))) {
      const { passwordHash: _, ...row } = user;
      return row;
    }
    throw requestIdReused(input.requestId);
  }

  async getUser(userId: string): Promise<UserRow> {
    if (!userId) throw invalidArgument([{ field: "user_id", reason: "USER_ID_REQUIRED", description: "is required" }]);
    const user = await users.getUser(this.deps.db, userId);
    if (!user) throw notFound("USER_NOT_FOUND", "no user has this id", { userId });
    return user;
  }

  async updateProfile(userId: string, paths: string[], input: ProfileInput): Promise<UserRow> {
    const validated = validateProfileUpdate(paths, input);
    if (!validated.ok) throw invalidArgument(validated.violations);
    const user = await users.updateProfile(this.deps.db, userId, validated.value);
    if (!user) throw notFound("USER_NOT_FOUND", "no user has this id", { userId });
    return user;
  }

  async searchUsers(search: users.UserSearch): Promise<UserRow[]> {
    return users.searchUsers(this.deps.db, search);
  }

  // ── Signing in ───────────────────────────────────────────────────────────────────────

  async login(identifier: string, password: string, clientIp: string): Promise<LoginResult> {
    const id = classifyIdentifier(identifier);
    // Both budgets are charged on every attempt, and the user is looked up meanwhile: the
    // two Redis round trips and the Postgres one overlap (a throttled attempt only wasted a read).
    const [, , user] = await Promise.all([
      this.deps.throttles.loginIp.enforce(ipKey(clientIp), "LOGIN_THROTTLED"),
      this.deps.throttles.loginIdentifier.enforce(identifierKey(id), "LOGIN_THROTTLED"),
      id.value ? users.findUserByIdentifier(this.deps.db, id.kind, id.value) : undefined,
    ]);
    // An unknown identifier costs the same argon2 verification as a known one.
    const hash = user?.passwordHash ?? (await this.dummyHash);
    const ok = password.length <= MAX_PASSWORD_INPUT && (await verifyPassword(hash, password)) && user !== undefined;
    if (!user || !ok) throw invalidCredentials();

    // Hashes made with weaker parameters than today's are upgraded while we know the password.
    const upgraded = needsRehash(user.passwordHash) ? await hashPassword(password) : undefined;
    const refresh = newRefreshToken();
    const now = new Date();
    const event = (firstLogin: boolean) =>
      outboxRow({ subject: USER_LOGGED_IN_SUBJECT, schema: UserLoggedInSchema, message: { userId: user.id, firstLogin, loginTime: timestampFromDate(now) } });
    const record = (db: Kysely<AuthDB>) => recordLoginAndStartSession(db, user.id, refresh.hash, this.lifetimes, { first: event(true), later: event(false) }, now);
    const { user: fresh, firstLogin, session } = upgraded
      ? await this.deps.db.transaction().execute(async (trx) => {
          await users.rehashPassword(trx, user.id, user.passwordHash, upgraded);
          return record(trx);
        })
      : await record(this.deps.db);
    if (upgraded) this.deps.log.info({ userId: user.id }, "password hash upgraded to the current argon2id parameters");
    const access = await this.accessTokenFor(fresh);
    return { access, refreshToken: refresh.token, refreshExpiresAt: session.refreshExpiresAt, user: fresh, firstLogin };
  }

  async refresh(refreshToken: string): Promise<SessionTokens> {
    const tokenHash = hashRefreshToken(refreshToken);
    if (!tokenHash) throw refreshTokenInvalid();
    const next = newRefreshToken();
    const outcome = await this.deps.db.transaction().execute(async (trx) => {
      const rotation = await rotateRefreshToken(trx, tokenHash, next.hash, this.lifetimes);
      const user = rotation.kind === "rotated" ? await users.getUser(trx, rotation.userId) : undefined;
      return { rotation, user };
    });
    const { rotation, user } = outcome;
    switch (rotation.kind) {
      case "rotated":
        if (!user) throw refreshTokenInvalid();
        return { access: await this.accessTokenFor(user), refreshToken: next.token, refreshExpiresAt: rotation.refreshExpiresAt };
      case "reused":
        // Either the client is confused or the token was stolen: the family is gone either way.
        this.deps.log.warn(
          { sessionId: rotation.sessionId, userId: rotation.userId, revokedNow: rotation.revokedNow },
          "refresh token reused: session revoked",
        );
        throw unauthenticated("REFRESH_TOKEN_REUSED", "this refresh token was already used; the session has been ended, log in again");
      case "expired":
        throw unauthenticated("SESSION_EXPIRED", "the session has expired; log in again");
      case "revoked":
      case "unknown":
        throw refreshTokenInvalid();
    }
  }

  /** Ends the session a refresh token (current or rotated) belongs to. Idempotent. */
  async logout(refreshToken: string): Promise<void> {
    const tokenHash = hashRefreshToken(refreshToken);
    const session = tokenHash && (await sessionOfToken(this.deps.db, tokenHash));
    if (!session) throw refreshTokenInvalid();
    if (await revokeSession(this.deps.db, session.sessionId, "logout")) {
      this.deps.log.info({ sessionId: session.sessionId, userId: session.userId }, "logged out");
    }
  }

  /**
   * Changes the password, ends every session, voids every access token issued before now
   * in every service, and starts a fresh session for the caller.
   */
  async changePassword(userId: string, currentPassword: string, newPassword: string, clientIp: string): Promise<SessionTokens> {
    // Wrong current passwords are login attempts too: same budgets.
    await this.deps.throttles.loginIp.enforce(ipKey(clientIp), "LOGIN_THROTTLED");
    await this.deps.throttles.loginIdentifier.enforce(identifierKey({ kind: "user", value: userId }), "LOGIN_THROTTLED");
    const user = await users.getUserWithHash(this.deps.db, userId);
    if (!user) throw notFound("USER_NOT_FOUND", "no user has this id", { userId });

    const rule = passwordViolation(newPassword, "new_password", [user.username, user.email, user.phoneNumber]);
    if (rule) throw invalidArgument([rule]);
    if (normalizePassword(newPassword) === normalizePassword(currentPassword)) {
      throw invalidArgument([{ field: "new_password", reason: "PASSWORD_UNCHANGED", description: "must differ from the current password" }]);
    }
    if (currentPassword.length > MAX_PASSWORD_INPUT || !(await verifyPassword(user.passwordHash, currentPassword))) {
      throw new VouchError(Code.InvalidArgument, "CURRENT_PASSWORD_INCORRECT", "the current password is incorrect", {
        violations: [{ field: "current_password", reason: "CURRENT_PASSWORD_INCORRECT", description: "is incorrect" }],
      });
    }
    const newHash = await hashPassword(newPassword);

    // The cutoff goes to Redis first: if that fails nothing has changed and the caller may
    // retry; if the database then fails, old tokens are void but the old password still
    // works, which fails safe.
    const cutoff = new Date();
    await this.revokeAccessTokens(userId, cutoff);
    const refresh = newRefreshToken();
    const session = await this.deps.db.transaction().execute(async (trx) => {
      if (!(await users.changePasswordHash(trx, userId, user.passwordHash, newHash, cutoff))) {
        throw new VouchError(Code.Aborted, "TRANSACTION_ABORTED", "the password was changed concurrently; try again");
      }
      const ended = await revokeUserSessions(trx, userId, "password_changed");
      this.deps.log.info({ userId, sessionsEnded: ended }, "password changed; every session ended and earlier access tokens revoked");
      return createSession(trx, userId, refresh.hash, this.lifetimes);
    });
    const fresh = await users.getUser(this.deps.db, userId);
    return { access: await this.accessTokenFor(fresh ?? user), refreshToken: refresh.token, refreshExpiresAt: session.refreshExpiresAt };
  }

  // ── Roles ────────────────────────────────────────────────────────────────────────────

  async grantAdmin(userId: string): Promise<UserRow> {
    if (!userId) throw invalidArgument([{ field: "user_id", reason: "USER_ID_REQUIRED", description: "is required" }]);
    const user = await users.withRoleLock(this.deps.db, (trx) => users.addRole(trx, userId, ADMIN));
    if (!user) throw notFound("USER_NOT_FOUND", "no user has this id", { userId });
    this.deps.log.info({ userId }, "ADMIN role granted");
    return user;
  }

  /** Revokes ADMIN; the user's access tokens carrying it stop working at once, everywhere. */
  async revokeAdmin(userId: string): Promise<UserRow> {
    if (!userId) throw invalidArgument([{ field: "user_id", reason: "USER_ID_REQUIRED", description: "is required" }]);
    const existing = await users.getUser(this.deps.db, userId);
    if (!existing) throw notFound("USER_NOT_FOUND", "no user has this id", { userId });
    if (!existing.roles.includes(ADMIN)) return existing;
    const result = await users.withRoleLock(this.deps.db, async (trx) => {
      // Under the lock no other role change can interleave: what we read is exact.
      const current = await users.getUser(trx, userId);
      if (!current || !current.roles.includes(ADMIN)) return current && { user: current, changed: false };
      if ((await users.countUsersWithRole(trx, ADMIN)) <= 1) {
        throw failedPrecondition("LAST_ADMIN", "the platform must keep at least one admin", { userId });
      }
      // Before the commit, as for a password change: a failure after it leaves the role in
      // place with the tokens void, which fails safe.
      const cutoff = new Date();
      await this.revokeAccessTokens(userId, cutoff);
      return users.removeRole(trx, userId, ADMIN, cutoff);
    });
    if (!result) throw notFound("USER_NOT_FOUND", "no user has this id", { userId });
    if (result.changed) this.deps.log.info({ userId }, "ADMIN role revoked; the user's earlier access tokens are revoked");
    return result.user;
  }

  // ── Services ─────────────────────────────────────────────────────────────────────────

  /** OAuth 2.0 client credentials: a SERVICE token for another Vouch service. */
  async issueServiceToken(clientId: string, clientSecret: string): Promise<IssuedAccessToken> {
    await this.deps.throttles.serviceToken.enforce(identifierKey({ kind: "client", value: clientId }), "RATE_LIMITED");
    const expected = this.serviceSecrets.get(clientId);
    // Compare digests of equal length in constant time, against a stand-in when the client is unknown.
    const matches = timingSafeEqual(sha256(clientSecret), expected ?? sha256(`unknown:${clientSecret}`));
    if (!expected || !matches) {
      this.deps.log.warn({ clientId: clientId.slice(0, 64) }, "service token refused: bad client credentials");
      throw unauthenticated("INVALID_CLIENT_CREDENTIALS", "unknown client id or wrong client secret");
    }
    return issueAccessToken(this.deps.tokens, { subject: clientId, roles: ["SERVICE"], ttlMs: this.deps.settings.serviceTokenTtlMs });
  }

  // ── Helpers ──────────────────────────────────────────────────────────────────────────

  private accessTokenFor(user: UserRow): Promise<IssuedAccessToken> {
    return issueAccessToken(this.deps.tokens, {
      subject: user.id,
      roles: user.roles,
      phoneNumber: user.phoneNumber,
      ttlMs: this.deps.settings.accessTokenTtlMs,
    });
  }

  private async revokeAccessTokens(userId: string, cutoff: Date): Promise<void> {
    try {
      await revokeTokensIssuedBefore(this.deps.redis, userId, cutoff);
    } catch (err) {
      this.deps.log.error({ err, userId }, "cannot record the token cutoff in redis; refusing the change");
      throw unavailable("TEMPORARILY_UNAVAILABLE", "cannot revoke existing tokens right now; nothing was changed, try again", 1_000);
    }
  }
}
