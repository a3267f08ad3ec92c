// Rate limiting shared by every replica: GCRA (the generic cell rate algorithm) in one Lua
// script on Redis.
//
// Why GCRA: each subject costs one key holding one number, its "theoretical arrival time"
// (TAT) — when the subject's budget would be full again. Each unit taken pushes the TAT one
// emission interval (period / rate) into the future; a request is allowed while the TAT
// stays within `burst` intervals of now. So a decision is O(1) (GET, compare, SET), budget
// refills continuously instead of resetting at window edges (no double burst at a boundary,
// unlike fixed windows), and, unlike sliding logs, memory does not grow with the rate. The
// key's TTL is exactly when the budget is full again, so idle subjects cost nothing.
//
// Why one script with `TIME`: read-compare-write must be atomic (two replicas must not both
// spend the last unit) and all replicas must share one clock (their own clocks drift).
// Redis runs scripts one at a time and replicates their effects (Redis ≥ 5), so calling
// TIME before a write is safe.
//
// When Redis is unreachable, decisions come from the same algorithm in this process with
// stricter limits: every replica then limits on its own, so the effective limit becomes
// (replicas × fallback). Failing open would let a Redis outage become an abuse window;
// failing closed would turn it into a full outage. Services with many replicas should set
// `fallback` explicitly (e.g. the main limit divided by the replica count).
import { Counter, register as defaultRegistry, type Registry } from "prom-client";
import type { Redis } from "ioredis";
import { resourceExhausted } from "./errors.js";
import type { Logger } from "./log.js";

export interface RateLimit {
  /** Units refilled per period, e.g. 10 per 60 000 ms. May be fractional. */
  ratePerPeriod: number;
  periodMs: number;
  /** Units that may be taken at once by a subject with a full budget (≥ 1). */
  burst: number;
}

export interface RateLimiterOptions extends RateLimit {
  /** Names the limit in keys (`rl:<name>:<key>`), logs and metrics, e.g. `login-ip`. */
  name: string;
  /** Used when Redis is unreachable. Default: half the rate and half the burst (at least 1). */
  fallback?: RateLimit;
  /** Where fallback use is reported (at most every 30 s per limiter). */
  log?: Logger;
  /** Longest wait for Redis before deciding locally instead. Default 200 ms. */
  redisTimeoutMs?: number;
  /** Registry for `vouch_rate_limit_decisions_total`. Default: prom-client's global registry. */
  registry?: Registry;
}

export interface RateLimitDecision {
  allowed: boolean;
  /** Units that could still be taken right now (after this take, if it was allowed). */
  remaining: number;
  /** 0 when allowed; otherwise how long until this same take would be allowed. */
  retryAfterMs: number;
  /** How long until the subject's budget is full again. */
  resetAfterMs: number;
}

export interface RateLimiter {
  readonly name: string;
  /** Takes `cost` units from `key`'s budget if they are available; never throws for Redis trouble. */
  take(key: string, cost?: number): Promise<RateLimitDecision>;
  /** Like `take`, but throws RESOURCE_EXHAUSTED (with RetryInfo) when refused. */
  enforce(key: string, reason?: string, cost?: number): Promise<void>;
}

// KEYS[1]: the subject. ARGV: emission interval (µs), burst tolerance (µs), cost.
// The TAT is stored in µs on the Redis clock. Returns {allowed, remaining, retryAfterUs, resetAfterUs}.
// Doubles near 1.7e15 µs are exact to 0.25 µs; the 1 µs slack absorbs that rounding when
// the interval is not a whole number of µs (e.g. 7 per second).
const GCRA_LUA = `
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * emission
local diff = now - (new_tat - tolerance)
if diff < -1 then
  local remaining = math.floor((now - (tat - tolerance) + 1) / emission)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, math.ceil(-diff), math.ceil(tat - now)}
end
local reset = new_tat - now
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil(reset / 1000)))
end
return {1, math.floor((diff + 1) / emission), 0, math.ceil(reset)}
`;

const SCRIPT_COMMAND = "vouchGcraTake";
type GcraReply = [number, number, number, number];
interface GcraClient {
  [SCRIPT_COMMAND](key: string, emissionUs: string, toleranceUs: string, cost: string): Promise<GcraReply>;
}

/** After Redis fails or times out, decide locally for this long before trying it again. */
const REDIS_COOLDOWN_MS = 1_000;
const FALLBACK_LOG_EVERY_MS = 30_000;
/** Bounds the fallback's memory when an outage meets many distinct subjects. */
const FALLBACK_MAX_KEYS = 100_000;
/** Statuses in which a command may still be answered soon; others mean "down, reconnecting". */
const REDIS_USABLE = new Set(["wait", "connecting", "connect", "ready"]);

export function createRateLimiter(redis: Redis, options: RateLimiterOptions): RateLimiter {
  const { name, log, redisTimeoutMs = 200 } = options;
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new RangeError(`rate limiter name ${JSON.stringify(name)}: use [A-Za-z0-9_.-]`);
  const main = checkLimit(options, `rate limiter ${name}`);
  const fallbackLimit = checkLimit(options.fallback ?? stricter(main), `rate limiter ${name} fallback`);
  const emissionUs = String((main.periodMs * 1000) / main.ratePerPeriod);
  const toleranceUs = String(((main.periodMs * 1000) / main.ratePerPeriod) * main.burst);

  // Registers (or re-registers, idempotently) the script on this client; ioredis sends
  // EVALSHA and falls back to EVAL on NOSCRIPT (after a Redis restart or failover).
  redis.defineCommand(SCRIPT_COMMAND, { numberOfKeys: 1, lua: GCRA_LUA });
  const scripted = redis as unknown as GcraClient;

  const local = createLocalGcra(fallbackLimit);
  const decisions = decisionCounter(options.registry ?? defaultRegistry);
  let skipRedisUntil = 0;
  let fallbackSince: number | undefined;
  let fallbackDecisions = 0;
  let lastFallbackLog = -Infinity;

  function onFallback(err: unknown) {
    const now = Date.now();
    fallbackSince ??= now;
    fallbackDecisions++;
    if (now - lastFallbackLog >= FALLBACK_LOG_EVERY_MS) {
      lastFallbackLog = now;
      log?.warn(
        { limiter: name, err, redisStatus: redis.status, fallbackDecisions, fallbackForMs: now - fallbackSince, fallback: fallbackLimit },
        "rate limiter deciding in-process: redis unavailable",
      );
    }
  }

  function onRedisBack() {
    if (fallbackSince === undefined) return;
    log?.info({ limiter: name, fallbackDecisions, fallbackForMs: Date.now() - fallbackSince }, "rate limiter back on redis");
    fallbackSince = undefined;
    fallbackDecisions = 0;
    lastFallbackLog = -Infinity;
    local.sweep();
  }

  async function takeFromRedis(key: string, cost: number): Promise<RateLimitDecision> {
    const reply = await withTimeout(
      scripted[SCRIPT_COMMAND](`rl:${name}:${key}`, emissionUs, toleranceUs, String(cost)),
      redisTimeoutMs,
    );
    const [allowed, remaining, retryAfterUs, resetAfterUs] = reply.map(Number);
    return {
      allowed: allowed === 1,
      remaining,
      retryAfterMs: allowed === 1 ? 0 : Math.max(1, Math.ceil(retryAfterUs / 1000)),
      resetAfterMs: Math.ceil(resetAfterUs / 1000),
    };
  }

  async function take(key: string, cost = 1): Promise<RateLimitDecision> {
    if (!(cost >= 0 && cost <= main.burst)) {
      // Such a take could never be allowed: a bug in the caller, not a limit to report.
      throw new RangeError(`rate limiter ${name}: cost ${cost} outside 0..${main.burst}`);
    }
    let decision: RateLimitDecision | undefined;
    let source: "redis" | "fallback" = "redis";
    if (REDIS_USABLE.has(redis.status) && Date.now() >= skipRedisUntil) {
      try {
        decision = await takeFromRedis(key, cost);
        onRedisBack();
      } catch (err) {
        skipRedisUntil = Date.now() + REDIS_COOLDOWN_MS;
        onFallback(err);
      }
    } else {
      onFallback(undefined);
    }
    if (!decision) {
      source = "fallback";
      // A cost above the stricter fallback burst could never pass: charge a full fallback budget.
      decision = local.take(key, Math.min(cost, fallbackLimit.burst));
    }
    decisions.inc({ limiter: name, decision: decision.allowed ? "allowed" : "refused", source });
    return decision;
  }

  async function enforce(key: string, reason = "RATE_LIMITED", cost = 1): Promise<void> {
    const decision = await take(key, cost);
    if (!decision.allowed) {
      // The key (an IP, an email) stays out of the message: it is not the caller's to read.
      throw resourceExhausted(
        reason,
        `rate limit ${name} exceeded; retry in ${Math.ceil(decision.retryAfterMs / 1000)} s`,
        decision.retryAfterMs,
      );
    }
  }

  return { name, take, enforce };
}

function checkLimit(limit: RateLimit, what: string): RateLimit {
  const { ratePerPeriod, periodMs, burst } = limit;
  if (!(ratePerPeriod > 0 && Number.isFinite(ratePerPeriod))) throw new RangeError(`${what}: ratePerPeriod must be > 0`);
  if (!(periodMs > 0 && Number.isFinite(periodMs))) throw new RangeError(`${what}: periodMs must be > 0`);
  if (!(Number.isInteger(burst) && burst >= 1)) throw new RangeError(`${what}: burst must be an integer ≥ 1`);
  return { ratePerPeriod, periodMs, burst };
}

function stricter({ ratePerPeriod, periodMs, burst }: RateLimit): RateLimit {
  return { ratePerPeriod: ratePerPeriod / 2, periodMs, burst: Math.max(1, Math.floor(burst / 2)) };
}

/** The same GCRA as the script, on this process's monotonic clock, in ms. */
function createLocalGcra({ ratePerPeriod, periodMs, burst }: RateLimit) {
  const emission = periodMs / ratePerPeriod;
  const tolerance = emission * burst;
  const slack = 1e-3; // 1 µs, as in the script
  const tats = new Map<string, number>();

  function sweep(now = performance.now()) {
    for (const [key, tat] of tats) if (tat <= now) tats.delete(key);
  }

  function take(key: string, cost: number): RateLimitDecision {
    const now = performance.now();
    const tat = Math.max(tats.get(key) ?? now, now);
    const newTat = tat + cost * emission;
    const diff = now - (newTat - tolerance);
    if (diff < -slack) {
      return {
        allowed: false,
        remaining: Math.max(0, Math.floor((now - (tat - tolerance) + slack) / emission)),
        retryAfterMs: Math.max(1, Math.ceil(-diff)),
        resetAfterMs: Math.ceil(tat - now),
      };
    }
    if (cost > 0) {
      tats.delete(key); // re-insert at the end: the Map's order is then least recently used first
      tats.set(key, newTat);
      if (tats.size > FALLBACK_MAX_KEYS) {
        sweep(now);
        // Still full of active subjects: forget the least recently used one (it gets a fresh budget).
        if (tats.size > FALLBACK_MAX_KEYS) tats.delete(tats.keys().next().value as string);
      }
    }
    return {
      allowed: true,
      remaining: Math.floor((diff + slack) / emission),
      retryAfterMs: 0,
      resetAfterMs: Math.ceil(newTat - now),
    };
  }

  return { take, sweep };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis did not answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

const DECISIONS_METRIC = "vouch_rate_limit_decisions_total";

function decisionCounter(registry: Registry): Counter<"limiter" | "decision" | "source"> {
  const existing = registry.getSingleMetric(DECISIONS_METRIC);
  if (existing) return existing as Counter<"limiter" | "decision" | "source">;
  return new Counter({
    name: DECISIONS_METRIC,
    help: "Rate limit decisions, by limiter, decision (allowed|refused) and source (redis|fallback).",
    labelNames: ["limiter", "decision", "source"] as const,
    registers: [registry],
  });
}
