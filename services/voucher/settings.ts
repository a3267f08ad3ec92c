// The voucher service's own settings, from the environment, with defaults that suit a
// laptop and production alike.
type Env = Record<string, string | undefined>;

export interface VoucherSettings {
  /** Largest (codes / pattern space) a book may reach: also the odds that one guess hits a code. */
  maxFillRatio: number;
  /** ValidateVoucher and ReserveVoucher per user: refill per minute and burst. */
  validateRatePerMinute: number;
  validateBurst: number;
  /** Codes per generation chunk (one transaction, one progress update). */
  generationChunkSize: number;
  /** How long a worker's hold on a job lasts without renewal (renewed every chunk). */
  jobLeaseMs: number;
  /** How often the top-up scheduler's leader looks for books to top up. */
  schedulerIntervalMs: number;
  /** How long request ids (and their stored responses) are kept. */
  requestRetentionMs: number;
  /** How long book stats may be served from cache. */
  statsCacheMs: number;
  /** Generation jobs one replica runs at once. */
  generationConcurrency: number;
}

function num(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`environment variable ${name} must be a positive number, got "${raw}"`);
  return value;
}

export function loadVoucherSettings(env: Env = process.env): VoucherSettings {
  return {
    maxFillRatio: num(env, "VOUCHER_MAX_FILL_RATIO", 1e-6),
    validateRatePerMinute: num(env, "VOUCHER_VALIDATE_RATE_PER_MINUTE", 60),
    validateBurst: Math.floor(num(env, "VOUCHER_VALIDATE_BURST", 30)),
    generationChunkSize: Math.floor(num(env, "VOUCHER_GENERATION_CHUNK", 50_000)),
    jobLeaseMs: num(env, "VOUCHER_JOB_LEASE_MS", 60_000),
    schedulerIntervalMs: num(env, "VOUCHER_SCHEDULER_INTERVAL_MS", 5_000),
    requestRetentionMs: num(env, "VOUCHER_REQUEST_RETENTION_MS", 7 * 24 * 3600_000),
    statsCacheMs: num(env, "VOUCHER_STATS_CACHE_MS", 3_000),
    generationConcurrency: Math.floor(num(env, "VOUCHER_GENERATION_CONCURRENCY", 2)),
  };
}
