// Text no handler should ever see: U+0000 (Postgres cannot store it in text, so it would
// surface as a database error) and unpaired UTF-16 surrogates (not Unicode text; protobuf's
// JSON parser already refuses them, this catches any other way in, e.g. a message built in
// process). Every string of every request is checked once here, before any handler runs, so
// each rpc gets INVALID_ARGUMENT with a violation naming the field instead of reaching the
// database. Timestamps and durations outside the range protobuf defines for them (year 1 to
// 9999; ±10,000 years) are refused the same way: they are not valid values of those types,
// and as JavaScript dates or SQL timestamps they overflow.
import type { Interceptor } from "@connectrpc/connect";
import { invalidArgument, type FieldViolation } from "./errors.js";
import { isWellFormed } from "./text.js";

const NUL = "\u0000";
const MAX_VIOLATIONS = 10;

/** `voucherTerms` → `voucher_terms`: violations name fields as the proto does. */
const protoName = (jsName: string) => jsName.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

function textProblem(s: string): string | undefined {
  if (s.includes(NUL)) return "must not contain the NUL character (U+0000)";
  if (!isWellFormed(s)) return "must be well-formed Unicode (no unpaired surrogates)";
  return undefined;
}

// google/protobuf/timestamp.proto and duration.proto: the valid ranges.
const MIN_TIMESTAMP_SECONDS = -62_135_596_800n; // 0001-01-01T00:00:00Z
const MAX_TIMESTAMP_SECONDS = 253_402_300_799n; // 9999-12-31T23:59:59Z
const MAX_DURATION_SECONDS = 315_576_000_000n;
const MAX_NANOS = 999_999_999;

function wellKnownProblem(o: Record<string, unknown>): string | undefined {
  const seconds = typeof o.seconds === "bigint" ? o.seconds : 0n;
  const nanos = typeof o.nanos === "number" ? o.nanos : 0;
  if (o.$typeName === "google.protobuf.Timestamp") {
    if (seconds < MIN_TIMESTAMP_SECONDS || seconds > MAX_TIMESTAMP_SECONDS || nanos < 0 || nanos > MAX_NANOS) {
      return "must be a timestamp between 0001-01-01 and 9999-12-31 with nanos in [0, 999999999]";
    }
  } else if (o.$typeName === "google.protobuf.Duration") {
    const sameSign = seconds === 0n || nanos === 0 || seconds > 0n === nanos > 0;
    if (seconds < -MAX_DURATION_SECONDS || seconds > MAX_DURATION_SECONDS || Math.abs(nanos) > MAX_NANOS || !sameSign) {
      return "must be a duration within ±10,000 years, seconds and nanos of the same sign";
    }
  }
  return undefined;
}

/** Collects the violations of every string, timestamp and duration in a request message (fields, lists, maps, oneofs). */
export function requestViolations(message: unknown): FieldViolation[] {
  const found: FieldViolation[] = [];
  const visit = (value: unknown, path: string) => {
    if (found.length >= MAX_VIOLATIONS) return;
    if (typeof value === "string") {
      const problem = textProblem(value);
      if (problem) found.push({ field: path, description: problem, reason: "INVALID_TEXT" });
    } else if (Array.isArray(value)) {
      value.forEach((v, i) => visit(v, `${path}[${i}]`));
    } else if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
      const o = value as Record<string, unknown>;
      // A oneof: { case: "percentOff", value: … } is the field `percent_off`.
      if (typeof o.case === "string" && "value" in o && Object.keys(o).length === 2) {
        visit(o.value, path ? `${path}.${protoName(o.case)}` : protoName(o.case));
        return;
      }
      const wellKnown = wellKnownProblem(o);
      if (wellKnown) {
        found.push({ field: path, description: wellKnown, reason: o.$typeName === "google.protobuf.Timestamp" ? "INVALID_TIMESTAMP" : "INVALID_DURATION" });
        return;
      }
      // A message's own keys are field names; any other object is a map, whose keys are
      // request text too.
      const isMessage = "$typeName" in o;
      for (const [k, v] of Object.entries(o)) {
        if (k === "$typeName" || k === "$unknown") continue;
        if (isMessage) {
          visit(v, path ? `${path}.${protoName(k)}` : protoName(k));
          continue;
        }
        const problem = textProblem(k);
        if (problem) found.push({ field: `${path}[key]`, description: problem, reason: "INVALID_TEXT" });
        visit(v, `${path}[${JSON.stringify(k.slice(0, 40))}]`);
      }
    }
  };
  visit(message, "");
  return found;
}

/** Refuses a unary or server-streaming request carrying such text. */
export function inputGuardInterceptor(): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) {
      const violations = requestViolations(req.message);
      if (violations.length) throw invalidArgument(violations);
    }
    return next(req);
  };
}
