// Phone top-ups paid by bank transfer: the saga's paths, the bank webhook, and the
// guarantee that a voucher never pays for two orders.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { sql } from "kysely";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { TopUpState } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { RedemptionState, VoucherState } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { newId } from "../../kit/ids.js";
import { createSimulatedOperator, type TopUpOperator } from "../operator.js";
import { signWebhook, WEBHOOK_PATH } from "../webhook.js";
import { expectError, newPhone, startHarness, violatedFields, vnd, waitFor, type Harness } from "./harness.js";

const simulated = createSimulatedOperator();
const refused = new Set<string>();
let operatorDown = false;
const operator: TopUpOperator = {
  async topUp(input) {
    if (operatorDown) throw new Error("operator unreachable");
    if (refused.has(input.phoneNumber)) return { kind: "refused", message: "number not served" };
    return simulated.topUp(input);
  },
};

let h: Harness;
let campaignId: string;
before(async () => {
  h = await startHarness("topups", { promotion: { operator } });
  campaignId = (await h.activeCampaign({ type: 2, quota: 100 })).id;
});
after(async () => {
  await h?.close();
});

/** A customer holding a fresh campaign voucher (30 % off, at most 50,000, from 20,000). */
async function customerWithVoucher(fromCampaign = campaignId) {
  const userId = newId();
  const auth = await h.as(userId);
  const grant = (await h.client.claimCampaign({ campaignId: fromCampaign }, auth)).grant!;
  assert.ok(grant.voucher?.code, "the claim issued its voucher");
  return { userId, auth, code: grant.voucher.code, voucherId: grant.voucherId };
}

const voucherState = async (voucherId: string) => (await h.voucherClient.getVoucher({ voucherId }, await h.admin())).voucher!.state;
const redemptionsOf = async (code: string) => (await h.voucherClient.listRedemptions({ code }, await h.admin())).redemptions;

async function postWebhook(body: object, signature?: string) {
  const raw = JSON.stringify(body);
  const res = await fetch(`${h.url}${WEBHOOK_PATH}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-vouch-signature": signature ?? signWebhook(h.settings.webhookSecret, raw) },
    body: raw,
  });
  return { status: res.status, body: (await res.json()) as Record<string, string> };
}

describe("top-ups", () => {
  test("an order with a voucher reserves it, charges the capped discount, and completes once on the exact transfer", async () => {
    const { auth, code, voucherId } = await customerWithVoucher();
    const phone = newPhone();
    const requestId = newId();
    const order = (await h.client.createTopUp({ phoneNumber: phone, amount: vnd(200_000), voucherCode: code.toLowerCase(), requestId }, auth)).topUp!;
    assert.equal(order.state, TopUpState.AWAITING_TRANSFER);
    assert.equal(order.discountAmount?.minorUnits, 50_000n, "30 % of 200,000 is 60,000, capped at 50,000");
    assert.equal(order.transferInstructions?.amount?.minorUnits, 150_000n);
    assert.match(order.transferInstructions!.reference, /^VCH[2-9A-HJKMNP-Z]{8}$/);
    assert.ok(order.transferInstructions!.deadlineTime);
    assert.equal(await voucherState(voucherId), VoucherState.RESERVED);

    const retry = (await h.client.createTopUp({ phoneNumber: phone, amount: vnd(200_000), voucherCode: code, requestId }, auth)).topUp!;
    assert.equal(retry.id, order.id, "a retry returns the same order");
    await expectError(h.client.createTopUp({ phoneNumber: phone, amount: vnd(300_000), voucherCode: code, requestId }, auth), Code.AlreadyExists, "REQUEST_ID_REUSED");

    const admin = await h.admin();
    const reference = order.transferInstructions!.reference;
    const wrong = await expectError(h.client.confirmTransfer({ transferReference: reference, amountPaid: vnd(200_000), requestId: "bank-wrong" }, admin), Code.FailedPrecondition, "TRANSFER_AMOUNT_MISMATCH");
    assert.ok(wrong.message.includes("150000"));
    assert.equal((await h.client.getTopUp({ topUpId: order.id }, auth)).topUp!.state, TopUpState.AWAITING_TRANSFER, "a wrong amount changes nothing");

    const spaced = `${reference.slice(0, 5)} ${reference.slice(5).toLowerCase()}`;
    const done = (await h.client.confirmTransfer({ transferReference: spaced, amountPaid: vnd(150_000), requestId: "bank-1" }, admin)).topUp!;
    assert.equal(done.state, TopUpState.COMPLETED);
    assert.ok(done.redemptionId && done.operatorReference);
    const replay = (await h.client.confirmTransfer({ transferReference: reference, amountPaid: vnd(150_000), requestId: "bank-1" }, admin)).topUp!;
    assert.equal(replay.operatorReference, done.operatorReference);
    await expectError(h.client.confirmTransfer({ transferReference: reference, amountPaid: vnd(150_000), requestId: "bank-2" }, admin), Code.FailedPrecondition, "TOP_UP_ALREADY_PAID");
    assert.equal(await voucherState(voucherId), VoucherState.REDEEMED);
    assert.equal((await redemptionsOf(code)).length, 1);
    assert.equal(simulated.credits.filter((c) => c.orderId === order.id).length, 1, "the phone is credited once");
    const events = await h.promotion.platform.db.selectFrom("outbox").select("id").where("subject", "=", "promotion.top_up_completed").execute();
    assert.ok(events.length >= 1);
    const mine = await h.client.listMyTopUps({ state: TopUpState.COMPLETED }, auth);
    assert.deepEqual(mine.topUps.map((t) => t.id), [order.id]);
  });

  test("a voucher paid twice concurrently and confirmed twice gives one completed order and one redemption", async () => {
    const { auth, code } = await customerWithVoucher();
    const attempts = await Promise.allSettled(
      [1, 2].map(() => h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(100_000), voucherCode: code, requestId: newId() }, auth)),
    );
    const created = attempts.flatMap((a) => (a.status === "fulfilled" ? [a.value.topUp!] : []));
    assert.equal(created.length, 1, "one order holds the voucher");
    const loser = attempts.find((a) => a.status === "rejected") as PromiseRejectedResult;
    assert.match(String(loser.reason), /voucher cannot pay/);

    const order = created[0];
    const pay = order.transferInstructions!.amount!.minorUnits;
    // The bank's webhook and an operator confirm the same transfer under two transaction ids, at once.
    const [hook, rpc] = await Promise.allSettled([
      postWebhook({ transactionId: "FT-A", reference: order.transferInstructions!.reference, amountMinorUnits: pay.toString(), currencyCode: "VND" }),
      h.client.confirmTransfer({ transferReference: order.transferInstructions!.reference, amountPaid: vnd(pay), requestId: "FT-B" }, await h.admin()),
    ]);
    const hookWon = hook.status === "fulfilled" && hook.value.status === 200;
    const rpcWon = rpc.status === "fulfilled";
    assert.equal(Number(hookWon) + Number(rpcWon), 1, `exactly one confirmation wins (webhook ${JSON.stringify(hook)})`);
    const final = (await h.client.getTopUp({ topUpId: order.id }, auth)).topUp!;
    assert.equal(final.state, TopUpState.COMPLETED);
    const redemptions = await redemptionsOf(code);
    assert.equal(redemptions.filter((r) => r.state === RedemptionState.REDEEMED).length, 1);
  });

  test("an order past its deadline expires and releases its voucher, which can then pay another order", async () => {
    const { auth, code, voucherId } = await customerWithVoucher();
    const order = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(50_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    // The deadline passes (moved in the database rather than waited for).
    await sql`UPDATE top_ups SET deadline_at = now() - interval '1 second' WHERE id = ${order.id}`.execute(h.promotion.platform.db);
    await waitFor("the order to expire", async () => (await h.client.getTopUp({ topUpId: order.id }, auth)).topUp!.state === TopUpState.EXPIRED);
    await waitFor("the voucher to be released", async () => (await voucherState(voucherId)) === VoucherState.ASSIGNED);
    await expectError(
      h.client.confirmTransfer({ transferReference: order.transferInstructions!.reference, amountPaid: order.transferInstructions!.amount, requestId: newId() }, await h.admin()),
      Code.FailedPrecondition,
      "TOP_UP_EXPIRED",
    );
    const next = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(50_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    assert.equal(next.state, TopUpState.AWAITING_TRANSFER);
    // Cancelling releases it too; cancelling twice is fine; nobody else may cancel it.
    await expectError(h.client.cancelTopUp({ topUpId: next.id }, await h.as(newId())), Code.PermissionDenied, "NOT_OWNER");
    assert.equal((await h.client.cancelTopUp({ topUpId: next.id }, auth)).topUp!.state, TopUpState.CANCELLED);
    assert.equal((await h.client.cancelTopUp({ topUpId: next.id }, auth)).topUp!.state, TopUpState.CANCELLED);
    assert.equal(await voucherState(voucherId), VoucherState.ASSIGNED);
  });

  test("the operator refusing after payment fails the order and gives the voucher back", async () => {
    const { auth, code, voucherId } = await customerWithVoucher();
    const phone = newPhone();
    refused.add(phone);
    const order = (await h.client.createTopUp({ phoneNumber: phone, amount: vnd(100_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    const failed = (await h.client.confirmTransfer({ transferReference: order.transferInstructions!.reference, amountPaid: order.transferInstructions!.amount, requestId: newId() }, await h.admin())).topUp!;
    assert.equal(failed.state, TopUpState.FAILED);
    assert.match(failed.failureMessage, /refunded/);
    assert.equal((await redemptionsOf(code))[0].state, RedemptionState.ROLLED_BACK);
    assert.equal(await voucherState(voucherId), VoucherState.ASSIGNED);
  });

  test("the voucher refused at redemption after payment fails the order and releases its reservation at once", async () => {
    // Its own campaign: pausing the book must not touch the vouchers of the other tests.
    const campaign = await h.activeCampaign({ type: 2, quota: 3 });
    const { auth, code, voucherId } = await customerWithVoucher(campaign.id);
    const order = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(100_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    assert.equal(await voucherState(voucherId), VoucherState.RESERVED);
    const admin = await h.admin();
    await h.voucherClient.pauseBook({ bookId: campaign.bookId }, admin);

    const confirm = { transferReference: order.transferInstructions!.reference, amountPaid: order.transferInstructions!.amount, requestId: newId() };
    const failed = (await h.client.confirmTransfer(confirm, admin)).topUp!;
    assert.equal(failed.state, TopUpState.FAILED);
    assert.match(failed.failureMessage, /BOOK_NOT_ACTIVE.*refunded/);
    assert.equal((await redemptionsOf(code)).length, 0, "nothing was redeemed");
    assert.equal(await voucherState(voucherId), VoucherState.ASSIGNED, "the reservation is released, not left to its lease");
    const row = await h.promotion.platform.db.selectFrom("top_ups").select("release_pending").where("id", "=", order.id).executeTakeFirstOrThrow();
    assert.equal(row.release_pending, false);
    assert.equal((await h.client.confirmTransfer(confirm, admin)).topUp!.state, TopUpState.FAILED, "a replayed confirmation changes nothing");

    // Once the book is active again the voucher pays another order.
    await h.voucherClient.activateBook({ bookId: campaign.bookId }, admin);
    const next = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(100_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    assert.equal(next.state, TopUpState.AWAITING_TRANSFER);
  });

  test("an operator outage mid-saga leaves the order PROCESSING, and the sweep completes it once the operator is back", async () => {
    const { auth, code, voucherId } = await customerWithVoucher();
    const order = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(100_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    operatorDown = true;
    try {
      await expectError(
        h.client.confirmTransfer({ transferReference: order.transferInstructions!.reference, amountPaid: order.transferInstructions!.amount, requestId: "bank-outage" }, await h.admin()),
        Code.Unavailable,
        "TEMPORARILY_UNAVAILABLE",
      );
      assert.equal((await h.client.getTopUp({ topUpId: order.id }, auth)).topUp!.state, TopUpState.PROCESSING);
      assert.equal(await voucherState(voucherId), VoucherState.REDEEMED, "the redemption is recorded before the operator call");
    } finally {
      operatorDown = false;
    }
    await waitFor("the sweep to finish the order", async () => (await h.client.getTopUp({ topUpId: order.id }, auth)).topUp!.state === TopUpState.COMPLETED);
    assert.equal((await redemptionsOf(code)).length, 1);
  });

  test("a voucher that covers the whole amount completes the order at once", async () => {
    const free = await h.activeCampaign({
      type: 2,
      quota: 2,
      voucherTerms: { discount: { kind: { case: "percentOff", value: { basisPoints: 10_000 } } }, validityDays: 1, codePattern: "F-*{10}" },
    });
    const auth = await h.as(newId());
    const code = (await h.client.claimCampaign({ campaignId: free.id }, auth)).grant!.voucher!.code;
    const order = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(20_000), voucherCode: code, requestId: newId() }, auth)).topUp!;
    assert.equal(order.transferInstructions!.amount!.minorUnits, 0n);
    assert.equal(order.state, TopUpState.COMPLETED);
  });

  test("the bank webhook is verified by HMAC over the raw body and a fresh timestamp; a replayed delivery completes once", async () => {
    const auth = await h.as(newId());
    const order = (await h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(30_000), requestId: newId() }, auth)).topUp!;
    const body = { transactionId: "FT-HOOK-1", description: `TOPUP ${order.transferInstructions!.reference} THANKS`, amountMinorUnits: 30_000, currencyCode: "VND" };
    assert.deepEqual((await postWebhook(body, signWebhook("not-the-secret-at-all", JSON.stringify(body)))).status, 401);
    const stale = await postWebhook(body, signWebhook(h.settings.webhookSecret, JSON.stringify(body), Math.floor(Date.now() / 1000) - 3600));
    assert.deepEqual([stale.status, stale.body.error], [401, "SIGNATURE_EXPIRED"]);
    assert.equal((await postWebhook({ ...body, amountMinorUnits: 29_999 })).body.error, "TRANSFER_AMOUNT_MISMATCH");
    assert.equal((await postWebhook({ transactionId: "x" })).status, 400);
    assert.equal((await postWebhook({ ...body, description: "VCH22222222" })).status, 404);
    const first = await postWebhook(body);
    assert.deepEqual(first, { status: 200, body: { result: "COMPLETED", topUpId: order.id } });
    assert.deepEqual(await postWebhook(body), first, "the bank retrying the delivery changes nothing");
    assert.equal(simulated.credits.filter((c) => c.orderId === order.id).length, 1);
  });

  test("bad top-up input is INVALID_ARGUMENT with field violations; an unusable voucher says why", async () => {
    const auth = await h.as(newId());
    const err = await expectError(h.client.createTopUp({ phoneNumber: "12345", amount: vnd(1), voucherCode: "", requestId: "" }, auth), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violatedFields(err).sort(), ["amount.minor_units", "phone_number", "request_id"]);
    const usd = await expectError(h.client.createTopUp({ phoneNumber: newPhone(), amount: { minorUnits: 5_000n, currencyCode: "USD" }, requestId: "r" }, auth), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violatedFields(usd), ["amount.currency_code"]);
    const unknown = await expectError(h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(50_000), voucherCode: "NOPE-NOPE", requestId: newId() }, auth), Code.FailedPrecondition, "VOUCHER_NOT_APPLICABLE");
    assert.equal(unknown.findDetails(ErrorInfoSchema)[0].metadata.voucherReason, "UNKNOWN_CODE");
    const { auth: owner, code } = await customerWithVoucher();
    const small = await expectError(h.client.createTopUp({ phoneNumber: newPhone(), amount: vnd(10_000), voucherCode: code, requestId: newId() }, owner), Code.FailedPrecondition, "VOUCHER_NOT_APPLICABLE");
    assert.match(small.message, /MINIMUM_NOT_MET/);
    await expectError(h.client.confirmTransfer({ transferReference: "VCH99999999", amountPaid: vnd(1), requestId: "r" }, await h.admin()), Code.NotFound, "TOP_UP_NOT_FOUND");
  });
});
