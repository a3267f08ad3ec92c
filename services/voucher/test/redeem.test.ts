// Validate, reserve, redeem and roll back against the real service: the races the field
// is known for (Saleor #544, Medusa #13760, Vendure's TOCTOU) must have one outcome only,
// checked in the database afterwards.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";
import { toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { sql } from "kysely";
import { BadRequestSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { InvalidVoucherReason, RedeemVoucherResponseSchema, VoucherState } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { LEASE_MARKER_MAX_MS, leaseKey } from "../vouchers.js";
import { bookInput, failure, startHarness, usd, waitFor, type Harness } from "./harness.js";

let h: Harness;
let admin: { headers: { authorization: string } };
let serial = 0;

before(async () => {
  // Book stats uncached here: the tests read them right after each change.
  h = await startHarness("redeem", { validateBurst: 30, validateRatePerMinute: 60, statsCacheMs: 0 });
  admin = await h.admin();
});
after(() => h?.close());

/** An active book of `n` imported codes. */
async function book(n: number, fields: Record<string, unknown> = {}) {
  const { book } = await h.client.createBook({ book: bookInput(fields) }, admin);
  const prefix = `R${++serial}X${randomUUID().slice(0, 6).toUpperCase()}`;
  const codes = Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(5, "0")}`);
  await h.client.importCodes({ bookId: book!.id, codes }, admin);
  await h.client.activateBook({ bookId: book!.id }, admin);
  return { bookId: book!.id, codes };
}

async function assign(bookId: string, userId: string) {
  const { voucher } = await h.client.assignVoucher({ bookId, userId }, admin);
  return voucher!;
}

const redeemReq = (code: string, requestId: string = randomUUID(), amount = 10_000, extra: Record<string, unknown> = {}) => ({
  code,
  orderReference: `order-${requestId}`,
  orderAmount: usd(amount),
  requestId,
  ...extra,
});

describe("redeem", () => {
  test("100 concurrent redeems of one single-use code: exactly one succeeds, 99 get FAILED_PRECONDITION VOUCHER_ALREADY_REDEEMED", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-race");
    const auth = await h.as("u-race");
    const results = await Promise.allSettled(Array.from({ length: 100 }, () => h.client.redeemVoucher(redeemReq(v.code), auth)));
    const ok = results.filter((r) => r.status === "fulfilled");
    assert.equal(ok.length, 1);
    for (const r of results.filter((r): r is PromiseRejectedResult => r.status === "rejected")) {
      const f = await failure(Promise.reject(r.reason));
      assert.deepEqual([f.code, f.reason], ["FailedPrecondition", "VOUCHER_ALREADY_REDEEMED"]);
    }
    const row = await sql<{ use_count: number; redemptions: string; counted: number }>`
      SELECT c.use_count, (SELECT count(*) FROM redemptions r WHERE r.code_id = c.id) AS redemptions,
             (SELECT redemptions FROM book_users WHERE book_id = c.book_id AND user_id = 'u-race') AS counted
      FROM codes c WHERE c.id = ${v.id}`.execute(h.voucher.platform.db);
    assert.deepEqual(row.rows[0], { use_count: 1, redemptions: "1", counted: 1 });
  });

  test("a retry with the same request_id returns the identical response, even after the code is used up; another payload under it is ALREADY_EXISTS REQUEST_ID_REUSED", async () => {
    const { bookId } = await book(1, { discount: { kind: { case: "percentOff", value: { basisPoints: 3000, maxAmount: usd(2_000) } } } });
    const v = await assign(bookId, "u-replay");
    const auth = await h.as("u-replay");
    const req = redeemReq(v.code, "replay-1", 10_000);
    const first = await h.client.redeemVoucher(req, auth);
    assert.equal(first.redemption?.discountAmount?.minorUnits, 2_000n, "30% of 100.00 is 30.00, capped at 20.00");
    const again = await h.client.redeemVoucher(req, auth);
    assert.deepEqual(toBinary(RedeemVoucherResponseSchema, again), toBinary(RedeemVoucherResponseSchema, first));
    const concurrent = await Promise.all(Array.from({ length: 10 }, () => h.client.redeemVoucher(req, auth)));
    for (const c of concurrent) assert.equal(c.redemption?.id, first.redemption?.id);
    const changed = await failure(h.client.redeemVoucher({ ...req, orderAmount: usd(9_999) }, auth));
    assert.deepEqual([changed.code, changed.reason], ["AlreadyExists", "REQUEST_ID_REUSED"]);
    const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM redemptions WHERE code_id = ${v.id}`.execute(h.voucher.platform.db);
    assert.equal(rows[0].n, "1");
  });

  test("20 concurrent redeems by one user with a limit of 2 redemptions per user: exactly 2 succeed", async () => {
    const { bookId } = await book(20, { maxRedemptionsPerUser: 2 });
    const vouchers = [];
    for (let i = 0; i < 20; i++) vouchers.push(await assign(bookId, "u-limit"));
    const auth = await h.as("u-limit");
    const results = await Promise.allSettled(vouchers.map((v) => h.client.redeemVoucher(redeemReq(v.code), auth)));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 2);
    for (const r of results.filter((r): r is PromiseRejectedResult => r.status === "rejected")) {
      assert.equal((await failure(Promise.reject(r.reason))).reason, "REDEMPTIONS_PER_USER_LIMIT_REACHED");
    }
    const { rows } = await sql<{ redemptions: number; used: string }>`
      SELECT redemptions, (SELECT sum(use_count) FROM codes WHERE book_id = ${bookId}) AS used
      FROM book_users WHERE book_id = ${bookId} AND user_id = 'u-limit'`.execute(h.voucher.platform.db);
    assert.deepEqual(rows[0], { redemptions: 2, used: "2" });
  });

  test("a customer cannot redeem or reserve another user's voucher (PERMISSION_DENIED NOT_OWNER)", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-owner");
    const thief = await h.as("u-thief");
    assert.equal((await failure(h.client.redeemVoucher(redeemReq(v.code), thief))).reason, "NOT_OWNER");
    assert.equal((await failure(h.client.redeemVoucher({ ...redeemReq(v.code), userId: "u-owner" }, thief))).reason, "NOT_OWNER");
    assert.equal((await failure(h.client.reserveVoucher({ code: v.code }, thief))).reason, "NOT_OWNER");
  });
});

describe("reserve", () => {
  test("a live reservation holds the voucher: a redeem without its token is VOUCHER_RESERVED; with the token it succeeds", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-lease");
    const auth = await h.as("u-lease");
    const { reservation } = await h.client.reserveVoucher({ code: v.code.toLowerCase(), requestId: randomUUID() }, auth);
    assert.equal(reservation?.fencingToken, 1n);
    const blocked = await failure(h.client.redeemVoucher(redeemReq(v.code), auth));
    assert.deepEqual([blocked.code, blocked.reason], ["FailedPrecondition", "VOUCHER_RESERVED"]);
    assert.equal((await h.client.validateVoucher({ code: v.code }, auth)).reason, InvalidVoucherReason.RESERVED_BY_OTHER);
    assert.equal((await h.client.getVoucher({ voucherId: v.id }, auth)).voucher?.state, VoucherState.RESERVED);
    const again = await failure(h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth));
    assert.equal(again.reason, "VOUCHER_RESERVED");
    const done = await h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken: reservation!.reservationToken }), auth);
    assert.equal(done.redemption?.code, v.code);
    const { rows } = await sql<{ used_at: Date | null }>`SELECT used_at FROM reservations WHERE code_id = ${v.id}`.execute(h.voucher.platform.db);
    assert.ok(rows[0].used_at, "the reservation is marked used");
  });

  test("Redis only sheds: a lease marker left behind refuses reserves for at most a few seconds, then Postgres decides", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-marker");
    const auth = await h.as("u-marker");
    await h.client.reserveVoucher({ code: v.code, ttl: durationFromMs(3_600_000), requestId: randomUUID() }, auth);
    const redis = h.voucher.platform.redis; // its key prefix is the harness's
    const key = leaseKey(v.code);
    const ttl = await redis.pttl(key);
    assert.ok(ttl > 0 && ttl <= LEASE_MARKER_MAX_MS, `the marker of an hour-long lease lives ${ttl} ms`);
    // The lease ends without the marker being cleared (as when the DEL is lost).
    await sql`UPDATE codes SET lease_expires_at = NULL WHERE id = ${v.id}`.execute(h.voucher.platform.db);
    assert.equal((await failure(h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth))).reason, "VOUCHER_RESERVED", "shed while the marker lives");
    await waitFor("the marker to expire", async () => (await redis.exists(key)) === 0, LEASE_MARKER_MAX_MS + 2_000);
    const { reservation } = await h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth);
    assert.equal(reservation?.fencingToken, 2n, "Postgres granted the next lease");
  });

  test("releasing a reservation frees the voucher; releasing again or an unknown token changes nothing", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-release");
    const auth = await h.as("u-release");
    const { reservation } = await h.client.reserveVoucher({ code: v.code, ttl: durationFromMs(60_000) }, auth);
    assert.equal((await failure(h.client.releaseReservation({ reservationToken: reservation!.reservationToken }, await h.as("u-other")))).reason, "NOT_OWNER");
    await h.client.releaseReservation({ reservationToken: reservation!.reservationToken }, auth);
    await h.client.releaseReservation({ reservationToken: reservation!.reservationToken }, auth);
    await h.client.releaseReservation({ reservationToken: "rsv_unknown" }, auth);
    assert.equal((await h.client.validateVoucher({ code: v.code }, auth)).valid, true);
    const released = await failure(h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken: reservation!.reservationToken }), auth));
    assert.equal(released.reason, "RESERVATION_INVALID", "a released token cannot redeem");
    await h.client.redeemVoucher(redeemReq(v.code), auth);
  });

  test("a fenced stale reservation (its lease expired and the code was reserved again) is refused with RESERVATION_STALE", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-fence");
    const auth = await h.as("u-fence");
    const first = (await h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth)).reservation!;
    // Time passes: the first lease runs out (the minimum TTL is 10 s, so move the clock instead of waiting).
    await sql`UPDATE codes SET lease_expires_at = now() - interval '1 second' WHERE id = ${v.id}`.execute(h.voucher.platform.db);
    await h.voucher.platform.redis.del(`voucher:lease:${v.code}`);
    const second = (await h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth)).reservation!;
    assert.ok(second.fencingToken > first.fencingToken);
    const stale = await failure(h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken: first.reservationToken }), auth));
    assert.deepEqual([stale.code, stale.reason], ["FailedPrecondition", "RESERVATION_STALE"]);
    const current = await h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken: second.reservationToken }), auth);
    assert.equal(current.redemption?.voucherId, v.id);
  });

  test("validate with a reservation token answers what redeem with that token would: own lease no obstacle, foreign, stale, released and used tokens refused", async () => {
    const { bookId } = await book(2, { usesPerCode: 2 });
    const v = await assign(bookId, "u-checkout");
    const auth = await h.as("u-checkout");
    const check = async (reservationToken: string) => {
      const r = await h.client.validateVoucher({ code: v.code, orderAmount: usd(10_000), reservationToken }, auth);
      return r.valid ? "valid" : InvalidVoucherReason[r.reason];
    };
    const redeemWith = async (reservationToken: string) => (await failure(h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken }), auth))).reason;

    const first = (await h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth)).reservation!;
    assert.equal(await check(""), "RESERVED_BY_OTHER", "without its token the user's own lease holds the code");
    const own = await h.client.validateVoucher({ code: v.code, orderAmount: usd(10_000), reservationToken: first.reservationToken }, auth);
    assert.equal(own.valid, true);
    assert.equal(own.discountAmount?.minorUnits, 1_000n, "the discount is computed as for any valid code");

    assert.equal(await check("rsv_unknown"), "RESERVATION_INVALID");
    assert.equal(await redeemWith("rsv_unknown"), "RESERVATION_INVALID");
    const other = await assign(bookId, "u-checkout-other");
    const otherAuth = await h.as("u-checkout-other");
    const foreign = (await h.client.reserveVoucher({ code: other.code, requestId: randomUUID() }, otherAuth)).reservation!;
    assert.equal(await check(foreign.reservationToken), "RESERVATION_INVALID", "another user's reservation of another code");
    assert.equal(await redeemWith(foreign.reservationToken), "RESERVATION_INVALID");

    // The first lease runs out and the code is reserved again: the first token is stale.
    await sql`UPDATE codes SET lease_expires_at = now() - interval '1 second' WHERE id = ${v.id}`.execute(h.voucher.platform.db);
    await h.voucher.platform.redis.del(leaseKey(v.code));
    const second = (await h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth)).reservation!;
    assert.equal(await check(first.reservationToken), "RESERVATION_STALE");
    assert.equal(await redeemWith(first.reservationToken), "RESERVATION_STALE");
    assert.equal(await check(second.reservationToken), "valid");

    // Used: the code has a use left, but not that reservation.
    await h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken: second.reservationToken }), auth);
    assert.equal(await check(second.reservationToken), "RESERVATION_INVALID");
    assert.equal(await redeemWith(second.reservationToken), "RESERVATION_INVALID");
    assert.equal(await check(""), "valid", "the code itself is still usable once");

    // Released.
    const third = (await h.client.reserveVoucher({ code: v.code, requestId: randomUUID() }, auth)).reservation!;
    await h.client.releaseReservation({ reservationToken: third.reservationToken }, auth);
    assert.equal(await check(third.reservationToken), "RESERVATION_INVALID");
    assert.equal(await redeemWith(third.reservationToken), "RESERVATION_INVALID");

    const tooLong = await failure(h.client.validateVoucher({ code: v.code, reservationToken: "x".repeat(257) }, auth));
    assert.equal(tooLong.code, "InvalidArgument");
    assert.equal(tooLong.err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field, "reservation_token");
  });

  test("an expired lease that nobody took since still lets its holder redeem, and frees the voucher for others", async () => {
    const { bookId } = await book(2, { usesPerCode: 2 });
    const v = await assign(bookId, "u-expired-lease");
    const auth = await h.as("u-expired-lease");
    const r = (await h.client.reserveVoucher({ code: v.code }, auth)).reservation!;
    await sql`UPDATE codes SET lease_expires_at = now() - interval '1 second' WHERE id = ${v.id}`.execute(h.voucher.platform.db);
    assert.equal((await h.client.validateVoucher({ code: v.code }, auth)).valid, true, "an expired lease frees itself");
    await h.client.redeemVoucher(redeemReq(v.code, randomUUID(), 10_000, { reservationToken: r.reservationToken }), auth);
    await h.client.redeemVoucher(redeemReq(v.code), auth);
    assert.equal((await h.client.getVoucher({ voucherId: v.id }, auth)).voucher?.state, VoucherState.REDEEMED);
  });
});

describe("rollback", () => {
  test("rollback racing a redeem loses nothing: uses and per-user counts always match the redemptions in effect", async () => {
    const { bookId } = await book(1, { maxRedemptionsPerUser: 1 });
    const v = await assign(bookId, "u-rollback");
    const auth = await h.as("u-rollback");
    let current = (await h.client.redeemVoucher(redeemReq(v.code), auth)).redemption!;
    for (let i = 0; i < 25; i++) {
      const [rolled, redeemed] = await Promise.allSettled([
        h.client.rollbackRedemption({ redemptionId: current.id, reason: "refund", requestId: randomUUID() }, admin),
        h.client.redeemVoucher(redeemReq(v.code), auth),
      ]);
      assert.equal(rolled.status, "fulfilled");
      if (redeemed.status === "fulfilled") current = redeemed.value.redemption!;
      else {
        const f = await failure(Promise.reject(redeemed.reason));
        assert.ok(["VOUCHER_ALREADY_REDEEMED", "REDEMPTIONS_PER_USER_LIMIT_REACHED"].includes(f.reason!), f.reason);
        current = (await h.client.redeemVoucher(redeemReq(v.code), auth)).redemption!;
      }
      const { rows } = await sql<{ use_count: number; in_effect: string; counted: number }>`
        SELECT c.use_count, (SELECT count(*) FROM redemptions r WHERE r.code_id = c.id AND r.state = 'redeemed') AS in_effect,
               (SELECT redemptions FROM book_users WHERE book_id = c.book_id AND user_id = 'u-rollback') AS counted
        FROM codes c WHERE c.id = ${v.id}`.execute(h.voucher.platform.db);
      assert.deepEqual(rows[0], { use_count: 1, in_effect: "1", counted: 1 }, `round ${i}`);
    }
  });

  test("a redemption is rolled back once: a retry with the same request_id replays, another request is REDEMPTION_ALREADY_ROLLED_BACK", async () => {
    const { bookId } = await book(1);
    const v = await assign(bookId, "u-once");
    const auth = await h.as("u-once");
    const red = (await h.client.redeemVoucher(redeemReq(v.code), auth)).redemption!;
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => h.client.rollbackRedemption({ redemptionId: red.id, reason: "refund", requestId: `rb-${i}` }, admin)));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    const winner = results.findIndex((r) => r.status === "fulfilled");
    const replay = await h.client.rollbackRedemption({ redemptionId: red.id, reason: "refund", requestId: `rb-${winner}` }, admin);
    assert.equal(replay.redemption?.rollbackReason, "refund");
    assert.equal((await failure(h.client.rollbackRedemption({ redemptionId: red.id, reason: "refund", requestId: "rb-late" }, admin))).reason, "REDEMPTION_ALREADY_ROLLED_BACK");
    const { rows } = await sql<{ use_count: number }>`SELECT use_count FROM codes WHERE id = ${v.id}`.execute(h.voucher.platform.db);
    assert.equal(rows[0].use_count, 0);
    assert.equal((await h.client.validateVoucher({ code: v.code }, auth)).valid, true, "the use is back");
  });
});

describe("validate", () => {
  test("reports each reason in the contract's order without changing anything, and the discount when valid", async () => {
    const { bookId, codes } = await book(3, {
      discount: { kind: { case: "amountOff", value: usd(500) } },
      minimumOrderAmount: usd(2_000),
    });
    const v = await assign(bookId, "u-val");
    const auth = await h.as("u-val");
    const check = async (code: string, amount?: ReturnType<typeof usd>, who = auth) => (await h.client.validateVoucher({ code, orderAmount: amount }, who)).reason;
    assert.equal(await check("NO-SUCH-CODE"), InvalidVoucherReason.UNKNOWN_CODE);
    assert.equal(await check(codes.find((c) => c !== v.code)!), InvalidVoucherReason.UNKNOWN_CODE, "a free code looks unknown");
    assert.equal(await check(v.code, undefined, await h.as("u-val-other")), InvalidVoucherReason.NOT_OWNER);
    assert.equal(await check(v.code, usd(1_000)), InvalidVoucherReason.MINIMUM_NOT_MET);
    assert.equal(await check(v.code, { minorUnits: 5_000n, currencyCode: "EUR" }), InvalidVoucherReason.CURRENCY_MISMATCH);
    const ok = await h.client.validateVoucher({ code: ` ${v.code.toLowerCase()} `, orderAmount: usd(3_000) }, auth);
    assert.equal(ok.valid, true);
    assert.equal(ok.discountAmount?.minorUnits, 500n);
    assert.equal(ok.amountAfterDiscount?.minorUnits, 2_500n);
    await h.client.updateBook({ book: { id: bookId, startTime: timestampFromDate(new Date(Date.now() + 3600_000)) }, updateMask: { paths: ["start_time"] } }, admin);
    assert.equal(await check(v.code), InvalidVoucherReason.NOT_STARTED);
    await h.client.pauseBook({ bookId }, admin);
    assert.equal(await check(v.code), InvalidVoucherReason.BOOK_NOT_ACTIVE, "paused comes before not started");
    const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM redemptions WHERE book_id = ${bookId}`.execute(h.voucher.platform.db);
    assert.equal(rows[0].n, "0");
  });

  test("says ALREADY_REDEEMED for a spent code, and USER_LIMIT_REACHED for the user's other code once the book's per-user redemptions are used", async () => {
    const { bookId } = await book(2, { maxRedemptionsPerUser: 1 });
    const spent = await assign(bookId, "u-val-limit");
    const other = await assign(bookId, "u-val-limit");
    const auth = await h.as("u-val-limit");
    assert.equal((await h.client.validateVoucher({ code: other.code }, auth)).valid, true, "valid before the first redemption");
    await h.client.redeemVoucher(redeemReq(spent.code), auth);
    assert.equal((await h.client.validateVoucher({ code: spent.code }, auth)).reason, InvalidVoucherReason.ALREADY_REDEEMED);
    assert.equal((await h.client.validateVoucher({ code: other.code }, auth)).reason, InvalidVoucherReason.USER_LIMIT_REACHED);
    const f = await failure(h.client.redeemVoucher(redeemReq(other.code), auth));
    assert.deepEqual([f.code, f.reason], ["FailedPrecondition", "REDEMPTIONS_PER_USER_LIMIT_REACHED"], "redeem fails with the reason validate named");
  });

  test("is rate-limited per user (RESOURCE_EXHAUSTED with RetryInfo) so codes cannot be guessed", async () => {
    const guesser = await h.as("u-guesser");
    let limited;
    for (let i = 0; i < 60 && !limited; i++) {
      const r = await h.client.validateVoucher({ code: `GUESS-${i}` }, guesser).then(
        () => undefined,
        (e: unknown) => e,
      );
      if (r) limited = { i, f: await failure(Promise.reject(r)) };
    }
    assert.ok(limited, "the limiter trips");
    assert.ok(limited.i >= 29 && limited.i <= 32, `after about the burst of 30 (tripped at ${limited.i})`);
    assert.deepEqual([limited.f.code, limited.f.reason], ["ResourceExhausted", "RATE_LIMITED"]);
    assert.ok(limited.f.err.findDetails(RetryInfoSchema)[0]?.retryDelay);
    assert.equal((await h.client.validateVoucher({ code: "GUESS-X" }, await h.as("u-innocent"))).valid, false, "other users are unaffected");
  });

  test("guessing codes through RedeemVoucher is limited by the same budget, while the guesser's own redeems still succeed", async () => {
    const { bookId } = await book(2);
    const own = await assign(bookId, "u-redeem-guesser");
    const guesser = await h.as("u-redeem-guesser");
    const reasons: string[] = [];
    const started = Date.now();
    for (let i = 0; i < 40; i++) reasons.push((await failure(h.client.redeemVoucher(redeemReq(`GUESS-R-${i}`), guesser))).reason ?? "");
    // The budget refills one guess per second: on a slow machine a later guess may get one.
    const refilled = Math.ceil((Date.now() - started) / 1_000);
    const firstLimited = reasons.indexOf("RATE_LIMITED");
    assert.ok(firstLimited >= 29 && firstLimited <= 32 + refilled, `misses limited after about the burst of 30 (first at ${firstLimited})`);
    assert.ok(reasons.slice(0, firstLimited).every((r) => r === "VOUCHER_NOT_FOUND"), `misses before the limit: ${reasons.slice(0, firstLimited)}`);
    const after = reasons.slice(firstLimited);
    assert.ok(after.every((r) => r === "RATE_LIMITED" || r === "VOUCHER_NOT_FOUND"), `after the limit: ${after}`);
    assert.ok(after.filter((r) => r === "VOUCHER_NOT_FOUND").length <= refilled, `after the limit only refilled guesses pass: ${after}`);
    assert.ok((await h.client.redeemVoucher(redeemReq(own.code), guesser)).redemption, "a redeem of one's own code is not charged");
  });

  test("codes past their book's end are expired for every rpc", async () => {
    const { bookId } = await book(2);
    const v = await assign(bookId, "u-end");
    const auth = await h.as("u-end");
    await h.client.updateBook({ book: { id: bookId, endTime: timestampFromDate(new Date(Date.now() - 1_000)) }, updateMask: { paths: ["end_time"] } }, admin);
    assert.equal((await h.client.validateVoucher({ code: v.code }, auth)).reason, InvalidVoucherReason.EXPIRED);
    assert.equal((await failure(h.client.reserveVoucher({ code: v.code }, auth))).reason, "VOUCHER_EXPIRED");
    assert.equal((await failure(h.client.redeemVoucher(redeemReq(v.code), auth))).reason, "VOUCHER_EXPIRED");
    assert.equal((await failure(h.client.assignVoucher({ bookId, userId: "u-end-2" }, admin))).reason, "VOUCHER_EXPIRED");
    assert.equal((await h.client.getVoucher({ voucherId: v.id }, auth)).voucher?.state, VoucherState.EXPIRED);
    const mine = await h.client.listMyVouchers({ state: VoucherState.EXPIRED }, auth);
    assert.deepEqual(mine.vouchers.map((x) => x.id), [v.id]);
    const stats = (await h.client.getBookStats({ bookId }, admin)).stats!;
    assert.equal(stats.expiredCount, 2n);
  });
});

describe("states and counts", () => {
  test("ListMyVouchers filters and GetBookStats counts follow each voucher through assigned, reserved, redeemed and rolled back", async () => {
    const { bookId } = await book(5);
    const [kept, held, used] = [await assign(bookId, "u-states"), await assign(bookId, "u-states"), await assign(bookId, "u-states")];
    const auth = await h.as("u-states");
    await h.client.reserveVoucher({ code: held.code, requestId: randomUUID() }, auth);
    const { redemption } = await h.client.redeemVoucher(redeemReq(used.code), auth);
    const mine = async (state: VoucherState) => (await h.client.listMyVouchers({ state }, auth)).vouchers.map((v) => v.code);
    assert.deepEqual(await mine(VoucherState.ASSIGNED), [kept.code]);
    assert.deepEqual(await mine(VoucherState.RESERVED), [held.code]);
    assert.deepEqual(await mine(VoucherState.REDEEMED), [used.code]);
    assert.deepEqual((await mine(VoucherState.UNSPECIFIED)).sort(), [kept.code, held.code, used.code].sort());
    const counts = async () => {
      const s = (await h.client.getBookStats({ bookId }, admin)).stats!;
      return { total: s.totalCount, imported: s.importedCount, free: s.freeCount, assigned: s.assignedCount, reserved: s.reservedCount, redeemed: s.redeemedCount, redemptions: s.redemptionCount, rolledBack: s.rolledBackCount };
    };
    assert.deepEqual(await counts(), { total: 5n, imported: 5n, free: 2n, assigned: 1n, reserved: 1n, redeemed: 1n, redemptions: 1n, rolledBack: 0n });

    await h.client.rollbackRedemption({ redemptionId: redemption!.id, reason: "refund", requestId: randomUUID() }, admin);
    assert.deepEqual(await mine(VoucherState.REDEEMED), []);
    assert.deepEqual((await mine(VoucherState.ASSIGNED)).sort(), [kept.code, used.code].sort());
    assert.deepEqual(await counts(), { total: 5n, imported: 5n, free: 2n, assigned: 2n, reserved: 1n, redeemed: 0n, redemptions: 0n, rolledBack: 1n });
  });
});
