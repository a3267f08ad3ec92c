// The promotion service's own settings, from the environment like the shared Config. The
// defaults suit a laptop; production must set the bank webhook secret (start-up refuses
// the public dev one when NODE_ENV=production). Every variable is listed in the README
// section "Promotion".
type Env = Record<string, string | undefined>;

export interface BankAccount {
  beneficiaryName: string;
  bankName: string;
  accountNumber: string;
}

export interface PromotionSettings {
  /** Events handled at once per replica by the first-login consumer. */
  grantConcurrency: number;
  /** Voucher issuances in flight per replica (each holds a connection of the consumers' pool). */
  issueConcurrency: number;
  /** How often each replica sweeps: grants without voucher, campaigns past their end, overdue orders. */
  sweepIntervalMs: number;
  /** A grant still without voucher this long after it was made is issued by the sweep (the event path normally wins). */
  reconcileAfterMs: number;
  /** How long ListActiveCampaigns pages are cached (Redis and HTTP `max-age`). */
  activeCacheMs: number;
  /** Code pattern of campaign books whose voucher terms name none. */
  defaultCodePattern: string;
  /** Top-ups: the one currency accepted, and the amount range (minor units, inclusive). */
  topUpCurrency: string;
  topUpMinMinor: bigint;
  topUpMaxMinor: bigint;
  /** How long a customer has to make the bank transfer. */
  transferDeadlineMs: number;
  /** The voucher reservation outlives the deadline by this much, so it never lapses before the order does. */
  reservationMarginMs: number;
  bank: BankAccount;
  /** HMAC-SHA256 secret of the bank's transfer webhook. */
  webhookSecret: string;
  /** Signed webhook timestamps older or newer than this are refused (replay window). */
  webhookToleranceMs: number;
  /** Phone numbers the simulated operator refuses (comma-separated E.164), for demos and tests. */
  operatorRefuses: string[];
  /** Timeout of each call to the voucher service. */
  voucherCallTimeoutMs: number;
}

export const DEV_WEBHOOK_SECRET = "dev-bank-webhook-secret";

function int(env: Env, name: string, fallback: number, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer >= ${min}, got "${raw}"`);
  return value;
}

function minor(env: Env, name: string, fallback: bigint): bigint {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^[0-9]{1,18}$/.test(raw)) throw new Error(`${name} must be a non-negative integer of minor units, got "${raw}"`);
  return BigInt(raw);
}

export function loadPromotionSettings(env: Env = process.env): PromotionSettings {
  if (env.NODE_ENV === "production" && !env.PROMOTION_BANK_WEBHOOK_SECRET) {
    throw new Error("PROMOTION_BANK_WEBHOOK_SECRET must be set in production (the dev secret is public)");
  }
  const settings: PromotionSettings = {
    grantConcurrency: int(env, "PROMOTION_GRANT_CONCURRENCY", 8, 1),
    issueConcurrency: int(env, "PROMOTION_ISSUE_CONCURRENCY", 8, 1),
    sweepIntervalMs: int(env, "PROMOTION_SWEEP_INTERVAL_MS", 1_000, 10),
    reconcileAfterMs: int(env, "PROMOTION_RECONCILE_AFTER_MS", 10_000, 0),
    activeCacheMs: int(env, "PROMOTION_ACTIVE_CACHE_MS", 2_000, 0),
    defaultCodePattern: env.PROMOTION_CODE_PATTERN || "VCH-****-****-****",
    topUpCurrency: env.PROMOTION_TOP_UP_CURRENCY || "VND",
    topUpMinMinor: minor(env, "PROMOTION_TOP_UP_MIN_MINOR", 10_000n),
    topUpMaxMinor: minor(env, "PROMOTION_TOP_UP_MAX_MINOR", 5_000_000n),
    transferDeadlineMs: int(env, "PROMOTION_TRANSFER_DEADLINE_MS", 30 * 60_000, 1_000),
    reservationMarginMs: int(env, "PROMOTION_RESERVATION_MARGIN_MS", 10 * 60_000, 0),
    bank: {
      beneficiaryName: env.PROMOTION_BANK_BENEFICIARY || "VOUCH TOP-UP JSC",
      bankName: env.PROMOTION_BANK_NAME || "Vouch Demo Bank",
      accountNumber: env.PROMOTION_BANK_ACCOUNT || "0123456789",
    },
    webhookSecret: env.PROMOTION_BANK_WEBHOOK_SECRET || DEV_WEBHOOK_SECRET,
    webhookToleranceMs: int(env, "PROMOTION_BANK_WEBHOOK_TOLERANCE_MS", 5 * 60_000, 1_000),
    operatorRefuses: (env.PROMOTION_OPERATOR_REFUSES ?? "").split(",").map((s) => s.trim()).filter(Boolean),
    voucherCallTimeoutMs: int(env, "PROMOTION_VOUCHER_TIMEOUT_MS", 5_000, 100),
  };
  if (settings.topUpMinMinor < 1n || settings.topUpMinMinor > settings.topUpMaxMinor) {
    throw new Error("PROMOTION_TOP_UP_MIN_MINOR must be positive and at most PROMOTION_TOP_UP_MAX_MINOR");
  }
  // ReserveVoucher leases last at most 24 hours.
  if (settings.transferDeadlineMs + settings.reservationMarginMs > 24 * 3600_000) {
    throw new Error("PROMOTION_TRANSFER_DEADLINE_MS + PROMOTION_RESERVATION_MARGIN_MS must be at most 24 hours");
  }
  if (settings.webhookSecret.length < 16) throw new Error("PROMOTION_BANK_WEBHOOK_SECRET must be at least 16 characters");
  return settings;
}
