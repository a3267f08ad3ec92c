// Protocol → domain for requests: every field checked, every problem reported at once as
// a BadRequest field violation (INVALID_ARGUMENT) named by its path in the request.
import { requestIdViolation } from "../kit/idempotency.js";
import { durationMs, timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Book as BookMessage } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import type { Money as MoneyMessage } from "../../gen/vouch/type/v1/money_pb.js";
import type { Discount as DiscountMessage } from "../../gen/vouch/type/v1/discount_pb.js";
import { invalidArgument, type FieldViolation } from "../kit/errors.js";
import { bookCurrency, type BookSettings, type Discount, type Money } from "./domain/model.js";
import { normaliseCode, parsePattern, PatternError, MAX_CODE_LENGTH } from "./domain/pattern.js";

const CURRENCIES = new Set(Intl.supportedValuesOf("currency"));
export const MAX_GENERATE = 10_000_000;

export class Violations {
  readonly list: FieldViolation[] = [];
  add(field: string, reason: string, description: string) {
    this.list.push({ field, reason, description });
  }
  check() {
    if (this.list.length) throw invalidArgument(this.list);
  }
}

/** Runs `build` and throws INVALID_ARGUMENT with every violation it recorded. */
export function validated<T>(build: (v: Violations) => T): T {
  const v = new Violations();
  const out = build(v);
  v.check();
  return out;
}

export function money(v: Violations, field: string, m: MoneyMessage | undefined, rule: "positive" | "nonNegative"): Money | undefined {
  if (!m) return undefined;
  if (!CURRENCIES.has(m.currencyCode)) v.add(`${field}.currency_code`, "CURRENCY_CODE_INVALID", "must be an ISO 4217 code in upper case, e.g. USD");
  if (rule === "positive" ? m.minorUnits <= 0n : m.minorUnits < 0n) {
    v.add(`${field}.minor_units`, "AMOUNT_INVALID", rule === "positive" ? "must be positive" : "must not be negative");
  }
  return { minor: m.minorUnits, currency: m.currencyCode };
}

export function requestId(v: Violations, value: string, required = false): string {
  const bad = requestIdViolation(value, required);
  if (bad) v.list.push(bad);
  return value;
}

export function requiredId(v: Violations, field: string, value: string): string {
  if (!value) v.add(field, "REQUIRED", "is required");
  else if (value.length > 128) v.add(field, "ID_INVALID", "must be at most 128 characters");
  return value;
}

export function optionalUser(v: Violations, field: string, value: string): string {
  if (value.length > 128) v.add(field, "ID_INVALID", "must be at most 128 characters");
  return value;
}

/** An optional reservation token (ReserveVoucher's `rsv_…`; anything longer is not one). */
export function optionalReservationToken(v: Violations, value: string): string {
  if (value.length > 256) v.add("reservation_token", "RESERVATION_TOKEN_INVALID", "is not a reservation token");
  return value;
}

/** A code as typed → its normalised form (trimmed, upper-cased). */
export function code(v: Violations, field: string, typed: string, required = true): string {
  const c = normaliseCode(typed);
  if (!c) {
    if (required) v.add(field, "REQUIRED", "is required");
  } else if (c.length > MAX_CODE_LENGTH || !/^[\x21-\x7e]+$/.test(c)) {
    v.add(field, "CODE_MALFORMED", `must be 1 to ${MAX_CODE_LENGTH} printable ASCII characters`);
  }
  return c;
}

export const date = (t: Timestamp | undefined) => (t ? timestampDate(t) : null);

export function durationOf(v: Violations, field: string, d: Duration | undefined): number | null {
  if (!d) return null;
  const ms = durationMs(d);
  if (!Number.isFinite(ms) || ms < 0) v.add(field, "DURATION_INVALID", "must not be negative");
  return ms;
}

function discount(v: Violations, field: string, d: DiscountMessage | undefined): Discount | undefined {
  switch (d?.kind.case) {
    case "percentOff": {
      const p = d.kind.value;
      if (!(p.basisPoints >= 1 && p.basisPoints <= 10_000)) v.add(`${field}.percent_off.basis_points`, "PERCENT_INVALID", "must be from 1 (0.01 %) to 10000 (100 %)");
      return { kind: "percent", basisPoints: p.basisPoints, cap: money(v, `${field}.percent_off.max_amount`, p.maxAmount, "positive") ?? null };
    }
    case "amountOff":
      return { kind: "amount", amount: money(v, `${field}.amount_off`, d.kind.value, "positive")! };
    default:
      v.add(field, "DISCOUNT_REQUIRED", "exactly one of percent_off and amount_off must be set");
      return undefined;
  }
}

/** The book settings named by `paths` (all of them when omitted), each checked on its own. */
export function bookSettings(v: Violations, prefix: string, b: BookMessage | undefined, paths?: Set<string>): Partial<BookSettings> {
  const book = b ?? ({} as Partial<BookMessage>);
  const has = (p: string) => !paths || paths.has(p);
  const out: Partial<BookSettings> = {};
  const f = (name: string) => `${prefix}${name}`;
  if (has("name")) {
    const name = (book.name ?? "").trim();
    if (name.length < 1 || name.length > 200) v.add(f("name"), "NAME_INVALID", "must be 1 to 200 characters");
    out.name = name;
  }
  if (has("description")) {
    if ((book.description ?? "").length > 2000) v.add(f("description"), "DESCRIPTION_TOO_LONG", "must be at most 2000 characters");
    out.description = book.description ?? "";
  }
  if (has("discount")) out.discount = discount(v, f("discount"), book.discount);
  if (has("minimum_order_amount")) out.minimumOrder = money(v, f("minimum_order_amount"), book.minimumOrderAmount, "nonNegative") ?? null;
  if (has("start_time")) out.startAt = date(book.startTime);
  if (has("end_time")) out.endAt = date(book.endTime);
  if (has("code_validity")) {
    const ms = durationOf(v, f("code_validity"), book.codeValidity);
    if (ms !== null && ms < 60_000) v.add(f("code_validity"), "CODE_VALIDITY_INVALID", "must be at least one minute when set");
    out.codeValidityMs = ms;
  }
  if (has("code_pattern")) {
    const pattern = book.codePattern ?? "";
    if (pattern) {
      try {
        parsePattern(pattern);
      } catch (err) {
        if (!(err instanceof PatternError)) throw err;
        v.add(f("code_pattern"), "PATTERN_SYNTAX", `at position ${err.position}: ${err.message}`);
      }
    }
    out.codePattern = pattern;
  }
  if (has("uses_per_code")) {
    const uses = book.usesPerCode ?? 0;
    if (uses < 0 || uses > 1000) v.add(f("uses_per_code"), "USES_INVALID", "must be from 0 (meaning 1) to 1000");
    out.usesPerCode = uses === 0 ? 1 : uses;
  }
  const nonNegative = (path: string, value: number | undefined, key: "maxCodesPerUser" | "maxRedemptionsPerUser" | "autoTopUpThreshold" | "autoTopUpBatchSize") => {
    if (!has(path)) return;
    if ((value ?? 0) < 0) v.add(f(path), "LIMIT_INVALID", "must not be negative");
    out[key] = value ?? 0;
  };
  nonNegative("max_codes_per_user", book.maxCodesPerUser, "maxCodesPerUser");
  nonNegative("max_redemptions_per_user", book.maxRedemptionsPerUser, "maxRedemptionsPerUser");
  nonNegative("auto_top_up_threshold", book.autoTopUpThreshold, "autoTopUpThreshold");
  nonNegative("auto_top_up_batch_size", book.autoTopUpBatchSize, "autoTopUpBatchSize");
  return out;
}

/** Rules across fields of a whole book (after a create, or an update merged with the current book). */
export function checkBook(v: Violations, prefix: string, s: BookSettings): void {
  const f = (name: string) => `${prefix}${name}`;
  if (s.startAt && s.endAt && s.endAt <= s.startAt) v.add(f("end_time"), "END_BEFORE_START", "must be after start_time");
  if (s.discount && s.minimumOrder) {
    const currencies = new Set([bookCurrency({ discount: s.discount, minimumOrder: null }), s.minimumOrder.currency].filter(Boolean));
    if (currencies.size > 1) v.add(f("minimum_order_amount.currency_code"), "CURRENCIES_DIFFER", "must be the currency of the discount's amounts");
  }
  if (s.autoTopUpThreshold > 0) {
    if (!(s.autoTopUpBatchSize >= 1 && s.autoTopUpBatchSize <= MAX_GENERATE)) {
      v.add(f("auto_top_up_batch_size"), "BATCH_SIZE_INVALID", "must be 1 to 10,000,000 when auto_top_up_threshold is positive");
    }
    if (!s.codePattern) v.add(f("code_pattern"), "PATTERN_REQUIRED", "is required when auto top-up is on");
  }
}

export const UPDATABLE_PATHS = new Set([
  "name", "description", "discount", "minimum_order_amount", "start_time", "end_time", "code_validity", "code_pattern",
  "uses_per_code", "max_codes_per_user", "max_redemptions_per_user", "auto_top_up_threshold", "auto_top_up_batch_size",
]);
