// fast-check arbitraries for any protobuf message, built from its generated descriptor, so
// every rpc of every service is fuzzed without a hand-written generator per request type.
// Values lean on boundaries: empty and huge strings, Unicode that breaks naive code, ids and
// codes that exist (to get past "not found" into deeper code), int64 extremes, NaN, open enum
// values outside the declared ones.
import { ScalarType, create, type DescEnum, type DescField, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import fc from "fast-check";

export interface Hints {
  /** Real ids, codes, phone numbers and names of the environment: strings are sometimes drawn from here. */
  known: string[];
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

const NASTY_STRINGS = [
  "",
  " ",
  "\u0000",
  "a\u0000b",
  "\uD800", // a lone surrogate (encoded as U+FFFD on the wire)
  "\u202Eevil", // right-to-left override
  "\u200B", // zero width space
  "e\u0301", // combining accent
  "ﬁ", // NFKC changes it
  "İ", // lower-cases to two code points
  "👍🏽👨‍👩‍👧‍👦",
  "' OR 1=1 --",
  "%_\\",
  "../../etc/passwd",
  "${jndi:ldap://x}",
  "<script>alert(1)</script>",
  "-1",
  "0",
  "9223372036854775808",
  "NaN",
  "null",
  "+84901234567",
  "+0000",
  "a@b",
  "ADMIN",
  "CUSTOMER",
  "x".repeat(129),
  "é".repeat(10_000),
];

/** A few very large values, drawn rarely: size limits are part of the contract. */
const HUGE_STRINGS = ["A".repeat(100_000), "😀".repeat(50_000)];

function stringArb(hints: Hints): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 2, arbitrary: fc.string({ unit: "grapheme", maxLength: 20 }) },
    { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 20 }) },
    { weight: 3, arbitrary: fc.constantFrom(...NASTY_STRINGS) },
    { weight: 4, arbitrary: hints.known.length ? fc.constantFrom(...hints.known) : fc.constant("") },
    { weight: 1, arbitrary: fc.uuid() },
    { weight: 1, arbitrary: fc.constantFrom(...HUGE_STRINGS) },
  );
}

function scalarArb(type: ScalarType, hints: Hints): fc.Arbitrary<unknown> {
  switch (type) {
    case ScalarType.STRING:
      return stringArb(hints);
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.BYTES:
      return fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constant(new Uint8Array(0)));
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return fc.oneof(fc.integer({ min: -5, max: 2_000 }), fc.constantFrom(0, -1, 1, INT32_MAX, INT32_MIN, 1_000_000_000), fc.integer());
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return fc.oneof(fc.nat({ max: 2_000 }), fc.constantFrom(0, 1, 4294967295));
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return fc.oneof(
        fc.bigInt({ min: -5n, max: 1_000_000n }),
        fc.constantFrom(0n, -1n, 1n, INT64_MAX, INT64_MIN, 2n ** 53n + 1n, -(2n ** 53n) - 1n),
        fc.bigInt({ min: INT64_MIN, max: INT64_MAX }),
      );
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return fc.oneof(fc.bigInt({ min: 0n, max: 1_000_000n }), fc.constantFrom(0n, 2n ** 64n - 1n, 2n ** 63n));
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fc.oneof(fc.double(), fc.constantFrom(Number.NaN, Infinity, -Infinity, -0, 1e308));
  }
}

function enumArb(e: DescEnum): fc.Arbitrary<number> {
  // Proto3 enums are open: numbers the contract never declared arrive too.
  return fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...e.values.map((v) => v.number)) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 1_000 }) });
}

const MAX_DEPTH = 3;

function valueArb(field: DescField, hints: Hints, depth: number): fc.Arbitrary<unknown> | undefined {
  switch (field.fieldKind) {
    case "scalar":
      return scalarArb(field.scalar, hints);
    case "enum":
      return enumArb(field.enum);
    case "message":
      return depth >= MAX_DEPTH ? undefined : messageFields(field.message, hints, depth + 1);
    case "list": {
      const item =
        field.listKind === "scalar" ? scalarArb(field.scalar, hints)
        : field.listKind === "enum" ? enumArb(field.enum)
        : depth >= MAX_DEPTH ? undefined
        : messageFields(field.message, hints, depth + 1);
      if (!item) return undefined;
      // Long lists of short scalars only: 1,500 copies of a 100 kB string (or of a message
      // holding one) would be a body of gigabytes that exhausts the fuzzer, not the server.
      const shortItem =
        field.listKind === "scalar" && field.scalar === ScalarType.STRING ? fc.oneof(fc.string({ maxLength: 12 }), hints.known.length ? fc.constantFrom(...hints.known) : fc.constant(""))
        : field.listKind === "message" ? undefined
        : item;
      const long = shortItem?.map((x) => Array.from({ length: 1_500 }, () => x));
      return long ? fc.oneof({ weight: 6, arbitrary: fc.array(item, { maxLength: 4 }) }, { weight: 1, arbitrary: long }) : fc.array(item, { maxLength: 4 });
    }
    case "map": {
      const value =
        field.mapKind === "scalar" ? scalarArb(field.scalar, hints)
        : field.mapKind === "enum" ? enumArb(field.enum)
        : depth >= MAX_DEPTH ? undefined
        : messageFields(field.message, hints, depth + 1);
      if (!value) return undefined;
      const key = scalarArb(field.mapKey, hints).map((k) => String(k));
      return fc.dictionary(key, value, { maxKeys: 3 });
    }
  }
}

/** The init shape of a message: each field present or not, one case of each oneof at most. */
function messageFields(desc: DescMessage, hints: Hints, depth: number): fc.Arbitrary<Record<string, unknown>> {
  const parts: Record<string, fc.Arbitrary<unknown>> = {};
  for (const field of desc.fields) {
    if (field.oneof) continue;
    const arb = valueArb(field, hints, depth);
    if (arb) parts[field.localName] = fc.option(arb, { nil: undefined, freq: 3 });
  }
  for (const oneof of desc.oneofs) {
    const cases = oneof.fields
      .map((f) => [f, valueArb(f, hints, depth)] as const)
      .filter((x): x is readonly [DescField, fc.Arbitrary<unknown>] => x[1] !== undefined)
      .map(([f, arb]) => arb.map((value) => ({ case: f.localName, value })));
    if (cases.length) parts[oneof.localName] = fc.option(fc.oneof(...cases), { nil: undefined, freq: 3 });
  }
  return fc.record(parts, { requiredKeys: [] }) as fc.Arbitrary<Record<string, unknown>>;
}

/** Random messages of `desc`: the init object goes through `create`, so it is a valid message in memory. */
export function messageArb<Desc extends DescMessage>(desc: Desc, hints: Hints): fc.Arbitrary<MessageShape<Desc>> {
  return messageFields(desc, hints, 0).map((init) => create(desc, init as never) as MessageShape<Desc>);
}

/** A short, printable description of a generated value for reports. */
export function describeValue(value: unknown, max = 300): string {
  const text = JSON.stringify(value, (_k, v) => {
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "string" && v.length > 40) return `${v.slice(0, 20)}…(${v.length} chars)`;
    if (v instanceof Uint8Array) return `bytes[${v.length}]`;
    if (Array.isArray(v) && v.length > 5) return `[${v.length} items]`;
    return v;
  });
  return (text ?? String(value)).length > max ? `${text.slice(0, max)}…` : text;
}
