// One way to open Redis. Redis is never the source of truth here (rate limits, throttling,
// reservation locks, caches), so a Redis outage must degrade a service, not crash or hang it:
// - every 'error' event is handled (an unhandled one would kill the process) and logged once
//   per outage, not once per reconnect attempt;
// - reconnects back off exponentially with jitter, capped, so replicas don't stampede a
//   Redis that is coming back;
// - a command issued while Redis is down is queued for at most a couple of reconnect
//   attempts (`maxRetriesPerRequest`) and then rejected, so callers can fall back instead
//   of waiting forever. Hot paths should still bound their own wait (see ratelimit.ts).
import { Redis } from "ioredis";
import type { Logger } from "./log.js";

export type { Redis };

export interface RedisOptions {
  /**
   * Prepended by ioredis to every key argument, e.g. `vouch:edge:`. It is not applied to
   * patterns (`SCAN MATCH`, `KEYS`): those must spell the prefix themselves.
   */
  keyPrefix: string;
  log: Logger;
  /** Who this client is, in logs and `CLIENT LIST` (no spaces), e.g. `edge-ratelimit`. */
  name: string;
}

/** Reconnect delays: 50–100 ms, then doubling up to 1–2 s, with jitter. */
const RECONNECT_BASE_MS = 100;
const RECONNECT_CAP_MS = 2_000;

export function reconnectDelayMs(attempt: number): number {
  const ceiling = Math.min(RECONNECT_CAP_MS, RECONNECT_BASE_MS * 2 ** Math.min(attempt - 1, 16));
  // "Equal jitter": never less than half the ceiling, so a dead Redis is not hammered.
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

export function createRedis(url: string, { keyPrefix, log, name }: RedisOptions): Redis {
  const rlog = log.child({ redis: name });
  const redis = new Redis(url, {
    keyPrefix,
    connectionName: name,
    connectTimeout: 3_000,
    // A queued command fails after the second failed reconnect (~0.1–4 s), not never.
    maxRetriesPerRequest: 1,
    retryStrategy: reconnectDelayMs,
    // After a failover the old primary answers READONLY: reconnect and resend.
    reconnectOnError: (err) => (err.message.startsWith("READONLY") ? 2 : false),
  });

  // An outage starts with an error (refused, reset, timed out) or with a clean close (Redis
  // restarted, a proxy cut us off): log whichever comes first, once, then only at debug.
  let outageSince: number | undefined;
  let suppressed = 0;
  const outage = (err: Error | undefined, msg: string) => {
    if (outageSince === undefined) {
      outageSince = Date.now();
      rlog.error({ err }, msg);
    } else {
      suppressed++;
      rlog.debug({ err }, "redis still unavailable");
    }
  };
  redis.on("error", (err: Error) => outage(err, "redis unavailable; reconnecting in the background"));
  redis.on("reconnecting", () => {
    if (outageSince === undefined) outage(undefined, "redis connection lost; reconnecting in the background");
  });
  redis.on("ready", () => {
    if (outageSince !== undefined) {
      rlog.info({ outageMs: Date.now() - outageSince, suppressedErrors: suppressed }, "redis available again");
      outageSince = undefined;
      suppressed = 0;
    }
  });
  return redis;
}

/**
 * For readiness probes: true when Redis answers PING within `timeoutMs`. Never throws and
 * never waits longer than `timeoutMs`, whatever state the connection is in.
 */
export async function pingRedis(redis: Redis, timeoutMs = 1_000): Promise<boolean> {
  if (redis.status === "end") return false;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const ping = redis.ping().then(
    (reply) => reply === "PONG",
    () => false,
  );
  try {
    return await Promise.race([ping, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
