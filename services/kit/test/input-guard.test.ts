// Input the database or the wire cannot carry is refused up front, and errors echo back
// only bounded, well-formed text — each once a fuzzing finding (INTERNAL, a hung call, a
// lost HTTP/2 connection), now pinned here.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { DiscountSchema } from "../../../gen/vouch/type/v1/discount_pb.js";
import { loadConfig } from "../config.js";
import { createTokenVerifier } from "../auth.js";
import { toConnectError, VouchError } from "../errors.js";
import { requestViolations } from "../input-guard.js";
import { createLogger } from "../log.js";
import { createMetrics } from "../metrics.js";
import { createServiceServer, type RunningServer } from "../server.js";

describe("request text", () => {
  test("NUL characters and unpaired surrogates are found in nested fields, lists, map keys and oneofs, named as in the proto", () => {
    const message = {
      $typeName: "test.Req",
      displayName: "ok 🎉",
      tags: ["fine", "bad\u0000"],
      labels: { "k\uD800": "v" },
      discount: create(DiscountSchema, { kind: { case: "percentOff", value: { basisPoints: 1 } } }),
      note: { case: "freeText", value: "\uDC00lone" },
    };
    assert.deepEqual(
      requestViolations(message).map((v) => `${v.field} ${v.reason}`),
      ["tags[1] INVALID_TEXT", "labels[key] INVALID_TEXT", "note.free_text INVALID_TEXT"],
    );
    assert.deepEqual(requestViolations({ $typeName: "test.Req", a: "emoji 👍 and accents é", b: ["x"] }), []);
  });

  test("timestamps and durations outside protobuf's ranges are refused; their extremes are fine", () => {
    const ts = (seconds: bigint, nanos = 0) => ({ $typeName: "google.protobuf.Timestamp", seconds, nanos });
    const dur = (seconds: bigint, nanos = 0) => ({ $typeName: "google.protobuf.Duration", seconds, nanos });
    const message = {
      $typeName: "test.Req",
      startTime: ts(-62_135_596_800n),
      endTime: ts(253_402_300_799n, 999_999_999),
      tooLate: ts(253_402_300_800n),
      tooEarly: ts(-5_996_371_982_037_241_863n),
      badNanos: ts(0n, -1),
      ttl: dur(315_576_000_000n),
      tooLong: dur(9_007_199_254_740_993n),
      mixedSigns: dur(1n, -1),
    };
    assert.deepEqual(
      requestViolations(message).map((v) => `${v.field} ${v.reason}`),
      ["too_late INVALID_TIMESTAMP", "too_early INVALID_TIMESTAMP", "bad_nanos INVALID_TIMESTAMP", "too_long INVALID_DURATION", "mixed_signs INVALID_DURATION"],
    );
  });

  describe("through the shared listener", () => {
    let server: RunningServer;
    before(async () => {
      server = await createServiceServer({
        config: { ...loadConfig("voucher", {}), port: 0, shutdownGraceMs: 1_000 },
        log: createLogger("test", "silent"),
        metrics: createMetrics("test", { processMetrics: false }),
        services: [],
        routes: () => {},
        readiness: [],
        verifier: createTokenVerifier({ issuer: "x", audience: "y", keys: async () => { throw new Error("no keys in this test"); } }),
      }).listen();
    });
    after(() => server.close());

    for (const [what, body] of [["a NUL character", '{"service":"a\\u0000b"}'], ["an unpaired surrogate", '{"service":"a\\ud800b"}']] as const) {
      test(`a request with ${what} is INVALID_ARGUMENT naming the field, and answered at once`, async () => {
        const res = await fetch(`${server.url}/grpc.health.v1.Health/Check`, { method: "POST", headers: { "content-type": "application/json" }, body, signal: AbortSignal.timeout(5_000) });
        assert.equal(res.status, 400);
        const err = (await res.json()) as { code: string; message: string };
        assert.equal(err.code, "invalid_argument");
        assert.match(err.message, /service/);
      });
    }
  });
});

describe("error text", () => {
  test("a Postgres data exception (an int64 overflowing a column) is INVALID_ARGUMENT with a stable reason and no internals", () => {
    const pgError = Object.assign(new Error('value "9223372036854775807" is out of range for type integer'), { code: "22003" });
    const wire = toConnectError(pgError, "voucher.vouch.dev");
    assert.equal(wire.code, Code.InvalidArgument);
    assert.equal(wire.findDetails(ErrorInfoSchema)[0]?.reason, "VALUE_OUT_OF_RANGE");
    assert.doesNotMatch(wire.rawMessage, /integer|9223372036854775807/);
    // Other database errors stay INTERNAL, with nothing of them on the wire.
    const other = toConnectError(Object.assign(new Error('relation "x" does not exist'), { code: "42P01" }), "voucher.vouch.dev");
    assert.equal(other.code, Code.Internal);
    assert.equal(other.rawMessage, "internal error");
  });

  test("echoed input is clipped and made well-formed in the message, the violations and the metadata", () => {
    const huge = "x".repeat(100_000);
    const wire = toConnectError(
      new VouchError(Code.InvalidArgument, "INVALID_ARGUMENT", `name: ${huge}\uD800`, {
        violations: Array.from({ length: 50 }, (_, i) => ({ field: `f${i}`, description: `bad ${huge}` })),
        metadata: { value: `${huge}\uDBFF` },
      }),
      "test.vouch.dev",
    );
    assert.ok(wire.rawMessage.length <= 1_000 && wire.rawMessage.endsWith("…"));
    const violations = wire.findDetails(BadRequestSchema)[0].fieldViolations;
    assert.equal(violations.length, 20);
    assert.ok(violations.every((v) => v.description.length <= 300));
    const value = wire.findDetails(ErrorInfoSchema)[0].metadata.value;
    assert.ok(value.length <= 300 && !/[\uD800-\uDFFF]/.test(value));

    const cut = toConnectError(new VouchError(Code.NotFound, "X", `code ${"🎉".repeat(600)}`), "test.vouch.dev");
    assert.ok(!/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/.test(cut.rawMessage), "a cut never leaves half an emoji");
    const passthrough = toConnectError(new ConnectError(`bad \uD800 ${huge}`, Code.InvalidArgument), "test.vouch.dev");
    assert.ok(passthrough.rawMessage.length <= 1_000 && !passthrough.rawMessage.includes("\uD800"));
  });
});
