// With the real voucher service next to the provider (same database server and stream):
// each code the provider receives is stored once as a purchased code for its phone number
// before it is delivered, and the owner of that phone lists them (seed 002's flow 10–13).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { sql } from "kysely";
import { ProviderCodeStatus, DeliveryChannel } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import { bearer, expectError, newPhone, startProviderHarness, waitFor, type ProviderHarness } from "./harness.js";

let h: ProviderHarness;

before(async () => {
  h = await startProviderHarness("purchased", {
    // Half the codes inline, half by callback, one of them late.
    sim: { default: { inlineWindowMs: 200, lateAfterMs: 600, latency: [{ weight: 1, minMs: 50, maxMs: 900 }] } },
  });
});
after(() => h?.close());

test("every code the provider receives is stored once for its phone number, and its owner lists them", async () => {
  const phone = newPhone();
  const owner = await h.tokens.customer("user-purchases", phone);
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    const { codeRequest } = await h.client.requestCode({ phoneNumber: phone, channel: i % 2 ? DeliveryChannel.SMS : DeliveryChannel.WEB, requestId: `buy-${i}` }, bearer(owner));
    ids.push(codeRequest!.id);
  }
  const rows = await Promise.all(ids.map((id) => h.waitForState(id, ["delivered"])));

  const listed = await waitFor("the voucher service to store all six", async () => {
    const { purchasedCodes } = await h.vouchers.listPurchasedCodes({ phoneNumber: phone }, bearer(owner));
    return purchasedCodes.length === ids.length ? purchasedCodes : undefined;
  });
  assert.deepEqual(listed.map((p) => p.codeRequestId).sort(), [...ids].sort(), "one per request");
  for (const p of listed) {
    const row = rows.find((r) => r.id === p.codeRequestId)!;
    assert.equal(p.code, row.code);
    assert.equal(p.phoneNumber, phone);
    assert.equal(p.userId, "user-purchases");
    assert.equal(p.providerStatus, row.providerStatus === "late_success" ? ProviderCodeStatus.LATE_SUCCESS : ProviderCodeStatus.SUCCESS);
  }
  // Another customer may not list this phone's codes; an admin may.
  await expectError(h.vouchers.listPurchasedCodes({ phoneNumber: phone }, bearer(await h.tokens.customer("user-other", newPhone()))), Code.PermissionDenied, "NOT_OWNER");
  assert.equal((await h.vouchers.listPurchasedCodes({ phoneNumber: phone }, bearer(await h.tokens.admin()))).purchasedCodes.length, ids.length);
});
