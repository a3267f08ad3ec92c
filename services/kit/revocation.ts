// "Every access token of this subject issued before T is void": how a password change or
// the loss of a role reaches every service at once, although access tokens are verified
// locally and stay cryptographically valid until they expire.
//
// Auth writes `revoked-before:<subject>` = T (epoch ms) into Redis, keeping the later
// cutoff when one is already there, with a TTL of T + the longest access-token life (after
// that every token issued before T has expired anyway). Each service's verifier reads the
// key once per call (one GET, ~0.1 ms on loopback) and refuses a token issued before T.
//
// When a token was issued is read to the millisecond from its `jti`, a UUIDv7 whose first
// 48 bits are the issue time, when that agrees with `iat` (whole seconds); otherwise from
// `iat`. Millisecond precision matters: the fresh token ChangePassword returns is issued
// in the same second as the cutoff and must pass, the stolen one from a moment before must not.
//
// Trade-offs, written down because they are deliberate:
// - Redis is not the source of truth. Auth also keeps the cutoff in Postgres and writes it
//   back to Redis periodically, so a Redis that lost its data re-admits old tokens for at
//   most that period (and never past their own 15-minute expiry).
// - While Redis cannot be reached the check fails open (the token is accepted, a warning is
//   logged and counted): failing closed would turn a cache outage into a platform-wide
//   outage. Auth itself refuses to change a password while it cannot record the cutoff.
import { Counter, type Registry } from "prom-client";
import type { Redis } from "ioredis";
import type { Caller } from "./context.js";
import type { Logger } from "./log.js";
import { createRedis } from "./redis.js";

/** The longest life of any access token the platform issues; bounds how long a cutoff must be kept. */
export const MAX_ACCESS_TOKEN_TTL_MS = 15 * 60_000;
/** Extra time a cutoff is kept, for clock skew between auth replicas and verifiers. */
const CUTOFF_MARGIN_MS = 60_000;

export const revokedBeforeKey = (subject: string) => `revoked-before:${subject}`;

// KEYS[1] the subject's key; ARGV[1] the cutoff (ms), ARGV[2] its TTL (ms). Never moves a
// cutoff backwards, so two revocations racing each other leave the later one.
const RAISE_CUTOFF_LUA = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local cutoff = tonumber(ARGV[1])
if cutoff > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`;
const RAISE_COMMAND = "vouchRaiseRevocationCutoff";
interface RaiseClient {
  [RAISE_COMMAND](key: string, cutoffMs: string, ttlMs: string): Promise<number>;
}

/**
 * Revokes every access token of `subject` issued before `cutoff`, in every service.
 * Throws when Redis does not take it: callers must not report success then.
 */
export async function revokeTokensIssuedBefore(redis: Redis, subject: string, cutoff: Date, now = Date.now()): Promise<void> {
  const ttlMs = cutoff.getTime() + MAX_ACCESS_TOKEN_TTL_MS + CUTOFF_MARGIN_MS - now;
  if (ttlMs <= 0) return; // every token issued before the cutoff has expired already
  if (!(RAISE_COMMAND in redis)) redis.defineCommand(RAISE_COMMAND, { numberOfKeys: 1, lua: RAISE_CUTOFF_LUA });
  await (redis as unknown as RaiseClient)[RAISE_COMMAND](revokedBeforeKey(subject), String(cutoff.getTime()), String(Math.ceil(ttlMs)));
}

/** When the token was issued, to the millisecond when its UUIDv7 `jti` allows, else to the second. */
export function tokenIssuedAtMs(caller: Pick<Caller, "tokenId" | "issuedAt">): number {
  const iatMs = caller.issuedAt.getTime();
  const hex = caller.tokenId.replace(/-/g, "");
  if (/^[0-9a-f]{12}7[0-9a-f]{19}$/i.test(hex)) {
    const jtiMs = parseInt(hex.slice(0, 12), 16);
    // Only trusted when consistent with iat: the jti is signed too, but nothing else
    // promises it is a UUIDv7 of the issue time.
    if (jtiMs >= iatMs && jtiMs < iatMs + 1000) return jtiMs;
  }
  return iatMs;
}

export interface RevocationCheckOptions {
  /** A Redis client to use, or where to open one (lazily, on the first check). */
  redis: Redis | { url: string; keyPrefix: string };
  log: Logger;
  /** Counts checks that could not reach Redis (`vouch_token_revocation_unchecked_total`). */
  registry?: Registry;
  /** Longest wait for Redis before accepting the token unchecked. Default 250 ms. */
  timeoutMs?: number;
}

export interface RevocationCheck {
  /** For `createTokenVerifier({ isRevoked })`. Never throws. */
  isRevoked(caller: Caller): Promise<boolean>;
  /** Closes the Redis client if this check opened it. */
  close(): Promise<void>;
}

const WARN_EVERY_MS = 30_000;

export function createRevocationCheck(opts: RevocationCheckOptions): RevocationCheck {
  const { log, timeoutMs = 250 } = opts;
  const owned = !("status" in opts.redis);
  let client: Redis | undefined = owned ? undefined : (opts.redis as Redis);
  const redis = () => {
    if (!client) {
      const { url, keyPrefix } = opts.redis as { url: string; keyPrefix: string };
      client = createRedis(url, { keyPrefix, log, name: "token-revocation" });
    }
    return client;
  };
  const unchecked = opts.registry
    ? ((opts.registry.getSingleMetric("vouch_token_revocation_unchecked_total") as Counter | undefined) ??
      new Counter({
        name: "vouch_token_revocation_unchecked_total",
        help: "Access tokens accepted without a revocation check because Redis did not answer.",
        registers: [opts.registry],
      }))
    : undefined;
  let lastWarn = -Infinity;

  async function isRevoked(caller: Caller): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const cutoff = await Promise.race([
        redis().get(revokedBeforeKey(caller.subject)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`redis did not answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      return cutoff !== null && tokenIssuedAtMs(caller) < Number(cutoff);
    } catch (err) {
      unchecked?.inc();
      if (Date.now() - lastWarn >= WARN_EVERY_MS) {
        lastWarn = Date.now();
        log.warn({ err }, "token revocation check skipped: redis unavailable (accepting unexpired tokens)");
      }
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    isRevoked,
    async close() {
      if (owned && client) await client.quit().catch(() => client?.disconnect());
    },
  };
}
