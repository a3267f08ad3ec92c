// Login throttling and rpc rate limits, on the kit's GCRA limiter (one Lua script in Redis,
// shared by every auth replica). Every attempt takes a unit, successful or not, so
// concurrent guesses cannot slip past a check-then-count; a subject's budget refills
// continuously, so there is never a permanent lockout: after RetryInfo's delay the right
// password works again.
import { createHash } from "node:crypto";
import type { Registry } from "prom-client";
import type { Logger } from "../kit/log.js";
import { createRateLimiter, type RateLimiter } from "../kit/ratelimit.js";
import type { Redis } from "../kit/redis.js";
import type { Identifier } from "./domain/identifiers.js";
import type { AuthSettings, Throttle } from "./settings.js";

export interface Throttles {
  /** Per normalised login identifier, whether an account has it or not (and per user for ChangePassword). */
  loginIdentifier: RateLimiter;
  loginIp: RateLimiter;
  registerIp: RateLimiter;
  serviceToken: RateLimiter;
}

const HOUR_MS = 3_600_000;

export function createThrottles(redis: Redis, settings: AuthSettings, log: Logger, registry: Registry): Throttles {
  const limiter = (name: string, t: Throttle) =>
    createRateLimiter(redis, { name, ratePerPeriod: t.perHour, periodMs: HOUR_MS, burst: t.burst, log, registry });
  return {
    loginIdentifier: limiter("auth-login-identifier", settings.throttle.loginPerIdentifier),
    loginIp: limiter("auth-login-ip", settings.throttle.loginPerIp),
    registerIp: limiter("auth-register-ip", settings.throttle.registerPerIp),
    serviceToken: limiter("auth-service-token", settings.throttle.serviceTokenPerClient),
  };
}

/**
 * The throttling key of an identifier: a hash of its normal form, so "Alice@Example.com"
 * and "alice@example.com" share one budget, and no email or phone number sits in Redis
 * in clear.
 */
export function identifierKey(id: Identifier | { kind: "user" | "client"; value: string }): string {
  return createHash("sha256").update(`${id.kind}:${id.value}`).digest("base64url").slice(0, 32);
}

/** An unknown address (no socket peer) still gets a budget, shared by all such calls. */
export const ipKey = (ip: string) => ip || "unknown";
