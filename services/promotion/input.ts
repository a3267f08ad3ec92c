// Protocol → domain for requests: every field checked, every problem reported at once as
// a BadRequest field violation (INVALID_ARGUMENT) named by its path in the request.
// (The same small collector as voucher's input.ts; a shared one belongs in the kit.)
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Discount as DiscountMessage } from "../../gen/vouch/type/v1/discount_pb.js";
import type { Money as MoneyMessage } from "../../gen/vouch/type/v1/money_pb.js";
import type { VoucherTerms as VoucherTermsMessage } from "../../gen/vouch/promotion/v1/promotion_pb.js";
import { invalidArgument, type FieldViolation } from "../kit/errors.js";
import type { Discount, Money, VoucherTerms } from "./domain/model.js";

const CURRENCIES = new Set(Intl.supportedValuesOf("currency"));
export const MAX_QUOTA = 10_000_000;

export class Violations {
  readonly list: FieldViolation[] = [];
  add(field: string, reason: string, description: string) {
    this.list.push({ field, reason, description });
  }
}

/** Runs `build` and throws INVALID_ARGUMENT with every violation it recorded. */
export function validated<T>(build: (v: Violations) => T): T {
  const v = new Violations();
  const out = build(v);
  if (v.list.length) throw invalidArgument(v.list);
  return out;
}

export function money(v: Violations, field: string, m: MoneyMessage | undefined, rule: "positive" | "nonNegative", required = false): Money | undefined {
  if (!m) {
    if (required) v.add(field, "REQUIRED", "is required");
    return undefined;
  }
  if (!CURRENCIES.has(m.currencyCode)) v.add(`${field}.currency_code`, "CURRENCY_CODE_INVALID", "must be an ISO 4217 code in upper case, e.g. VND");
  if (rule === "positive" ? m.minorUnits <= 0n : m.minorUnits < 0n) {
    v.add(`${field}.minor_units`, "AMOUNT_INVALID", rule === "positive" ? "must be positive" : "must not be negative");
  }
  return { minor: m.minorUnits, currency: m.currencyCode };
}

export function requestId(v: Violations, value: string, required = false): string {
  if (required && !value) v.add("request_id", "REQUEST_ID_REQUIRED", "is required");
  if (value.length > 64) v.add("request_id", "REQUEST_ID_INVALID", "must be at most 64 characters");
  return value;
}

export function requiredId(v: Violations, field: string, value: string): string {
  if (!value) v.add(field, "REQUIRED", "is required");
  else if (value.length > 128) v.add(field, "ID_INVALID", "must be at most 128 characters");
  return value;
}

export function optionalId(v: Violations, field: string, value: string): string {
  if (value.length > 128) v.add(field, "ID_INVALID", "must be at most 128 characters");
  return value;
}

export const date = (t: Timestamp | undefined) => (t ? timestampDate(t) : null);

export function name(v: Violations, field: string, value: string): string {
  const trimmed = value.trim();
  if (trimmed.length < 1 || trimmed.length > 200) v.add(field, "NAME_INVALID", "must be 1 to 200 characters");
  return trimmed;
}

export function description(v: Violations, field: string, value: string): string {
  if (value.length > 2000) v.add(field, "DESCRIPTION_INVALID", "must be at most 2000 characters");
  return value;
}

export function quota(v: Violations, field: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > MAX_QUOTA) v.add(field, "QUOTA_INVALID", `must be 1 to ${MAX_QUOTA.toLocaleString("en")}`);
  return value;
}

function discount(v: Violations, field: string, d: DiscountMessage | undefined): Discount | undefined {
  switch (d?.kind.case) {
    case "percentOff": {
      const { basisPoints, maxAmount } = d.kind.value;
      if (!Number.isInteger(basisPoints) || basisPoints < 1 || basisPoints > 10_000) {
        v.add(`${field}.percent_off.basis_points`, "PERCENT_INVALID", "must be 1 (0.01 %) to 10000 (100 %)");
      }
      return { kind: "percent", basisPoints, cap: money(v, `${field}.percent_off.max_amount`, maxAmount, "positive") };
    }
    case "amountOff":
      return { kind: "amount", amount: money(v, `${field}.amount_off`, d.kind.value, "positive")! };
    default:
      v.add(field, "DISCOUNT_REQUIRED", "one of percent_off or amount_off is required");
      return undefined;
  }
}

const discountCurrency = (d: Discount | undefined) => (d?.kind === "percent" ? d.cap?.currency : d?.amount.currency);

export function voucherTerms(v: Violations, field: string, t: VoucherTermsMessage | undefined): VoucherTerms {
  if (!t) {
    v.add(field, "REQUIRED", "is required");
    return { discount: { kind: "percent", basisPoints: 0 }, validityDays: 0, codePattern: "" };
  }
  const d = discount(v, `${field}.discount`, t.discount);
  const minimum = money(v, `${field}.minimum_top_up_amount`, t.minimumTopUpAmount, "nonNegative");
  const currency = discountCurrency(d);
  if (minimum && currency && minimum.currency !== currency) {
    v.add(`${field}.minimum_top_up_amount.currency_code`, "CURRENCY_MISMATCH", "must be the currency of the discount");
  }
  if (!Number.isInteger(t.validityDays) || t.validityDays < 1 || t.validityDays > 3650) v.add(`${field}.validity_days`, "VALIDITY_INVALID", "must be 1 to 3650 days");
  if (t.codePattern.length > 64) v.add(`${field}.code_pattern`, "PATTERN_INVALID", "must be at most 64 characters");
  return { discount: d ?? { kind: "percent", basisPoints: 0 }, minimum, validityDays: t.validityDays, codePattern: t.codePattern.trim() };
}

export function windowOf(v: Violations, field: string, start: Date | null, end: Date | null) {
  if (start && end && end <= start) v.add(`${field}.end_time`, "WINDOW_INVALID", "must be after start_time");
}
