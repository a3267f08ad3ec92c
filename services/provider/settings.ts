// The provider service's own settings, from the environment like the shared Config. The
// defaults are the production timings of seed 002 (a code within 3 s or a callback, late
// after 30 s) and point at the local provider-sim. Every variable is listed in the README
// section "Provider".
import { DEFAULT_PORTS, type Config } from "../kit/config.js";

type Env = Record<string, string | undefined>;

export interface BreakerSettings {
  /** A call taking longer than this is a failure: just above the provider's 3 s answer. */
  timeoutMs: number;
  /** Failure percentage within the rolling window at which the breaker opens. */
  errorThresholdPercentage: number;
  /** Calls within the rolling window before the breaker may open at all. */
  volumeThreshold: number;
  /** How long the breaker stays open before letting one probe through (half-open). */
  resetTimeoutMs: number;
  /** The rolling window the error percentage is computed over. */
  rollingWindowMs: number;
}

/** A GCRA limit: `burst` at once, refilled at `perMinute`; 0 per minute turns it off. */
export interface RequestLimit {
  perMinute: number;
  burst: number;
}

export interface ProviderSettings {
  /** Base URL of the outside provider's HTTP API. */
  apiUrl: string;
  /** Base URL the provider can reach this service's callback endpoint at. */
  callbackBaseUrl: string;
  breaker: BreakerSettings;
  /** Provider calls (each a breaker failure or success) before a request is FAILED. */
  maxAttempts: number;
  /** Redelivery delays of a request whose call failed or met an open breaker; the last repeats. */
  retryBackoffMs: number[];
  /** A request without a code this long after it was made becomes EXPIRED (or FAILED if never acknowledged). */
  requestDeadlineMs: number;
  /** How often each replica looks for overdue requests and unsent notices. */
  sweepIntervalMs: number;
  /** Provider calls in flight per replica (each holds a database connection while it runs). */
  workerConcurrency: number;
  /** Code deliveries in flight per replica. */
  deliveryConcurrency: number;
  /** Deliveries committed in one transaction when several are waiting (see the kit consumer's batchSize). */
  deliveryBatchSize: number;
  /** Where SMS go: unset keeps them in the dev sink (readable with ListSentSms). */
  smsGatewayUrl: string | undefined;
  /** Bearer token for the SMS gateway. */
  smsGatewayToken: string | undefined;
  /** WatchCodeRequest streams end after this long; clients watch again. */
  watchMaxMs: number;
  /** RequestCode per user and per phone number: each new request buys a code. */
  requestLimits: { perUser: RequestLimit; perPhoneNumber: RequestLimit };
}

function int(env: Env, name: string, fallback: number, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer >= ${min}, got "${raw}"`);
  return value;
}

function list(env: Env, name: string, fallback: number[]): number[] {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const values = raw.split(",").map((v) => Number(v.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v < 0)) {
    throw new Error(`${name} must be a comma-separated list of milliseconds, got "${raw}"`);
  }
  return values;
}

function url(env: Env, name: string, fallback: string | undefined): string | undefined {
  const raw = env[name] || fallback;
  if (raw === undefined) return undefined;
  try {
    return new URL(raw).toString().replace(/\/$/, "");
  } catch {
    throw new Error(`${name} must be a URL, got "${raw}"`);
  }
}

export function loadProviderSettings(config: Pick<Config, "peers">, env: Env = process.env): ProviderSettings {
  const settings: ProviderSettings = {
    // By default the local provider-sim, wherever `npm start` put it.
    apiUrl: url(env, "PROVIDER_API_URL", `http://127.0.0.1:${env.PROVIDER_SIM_PORT || DEFAULT_PORTS["provider-sim"]}`)!,
    callbackBaseUrl: url(env, "PROVIDER_CALLBACK_BASE_URL", config.peers.provider)!,
    breaker: {
      timeoutMs: int(env, "PROVIDER_CALL_TIMEOUT_MS", 3_500, 1),
      errorThresholdPercentage: int(env, "PROVIDER_BREAKER_ERROR_PERCENT", 50, 1),
      volumeThreshold: int(env, "PROVIDER_BREAKER_VOLUME_THRESHOLD", 5, 1),
      resetTimeoutMs: int(env, "PROVIDER_BREAKER_RESET_MS", 5_000, 1),
      rollingWindowMs: int(env, "PROVIDER_BREAKER_WINDOW_MS", 10_000, 100),
    },
    maxAttempts: int(env, "PROVIDER_MAX_ATTEMPTS", 5, 1),
    retryBackoffMs: list(env, "PROVIDER_RETRY_BACKOFF_MS", [500, 1_000, 2_000, 5_000]),
    requestDeadlineMs: int(env, "PROVIDER_REQUEST_DEADLINE_MS", 120_000, 1),
    sweepIntervalMs: int(env, "PROVIDER_SWEEP_INTERVAL_MS", 1_000, 10),
    workerConcurrency: int(env, "PROVIDER_WORKER_CONCURRENCY", 32, 1),
    deliveryConcurrency: int(env, "PROVIDER_DELIVERY_CONCURRENCY", 32, 1),
    deliveryBatchSize: int(env, "PROVIDER_DELIVERY_BATCH_SIZE", 16, 1),
    smsGatewayUrl: url(env, "SMS_GATEWAY_URL", undefined),
    smsGatewayToken: env.SMS_GATEWAY_TOKEN || undefined,
    watchMaxMs: int(env, "PROVIDER_WATCH_MAX_MS", 5 * 60_000, 1_000),
    requestLimits: {
      perUser: { perMinute: int(env, "PROVIDER_REQUESTS_PER_USER_PER_MINUTE", 10), burst: int(env, "PROVIDER_REQUESTS_PER_USER_BURST", 5, 1) },
      perPhoneNumber: { perMinute: int(env, "PROVIDER_REQUESTS_PER_PHONE_PER_MINUTE", 6), burst: int(env, "PROVIDER_REQUESTS_PER_PHONE_BURST", 3, 1) },
    },
  };
  if (settings.breaker.errorThresholdPercentage > 100) throw new Error("PROVIDER_BREAKER_ERROR_PERCENT must be at most 100");
  return settings;
}
