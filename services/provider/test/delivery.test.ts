// From RequestCode to the customer: web delivery seen on the WatchCodeRequest stream, SMS
// delivery seen in the dev sink, both only after the voucher service stored the code, the
// deadline sweep telling customers (stream and SMS), exactly one `code_received` per
// request, and replicas sharing the work.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import pg from "pg";
import { CodeRequestState, type WatchCodeRequestResponse } from "../../../gen/vouch/provider/v1/provider_pb.js";
import { DeliveryChannel, ProviderCodeStatus } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import { bearer, expectError, newPhone, startProviderHarness, waitFor, type ProviderHarness } from "./harness.js";

let h: ProviderHarness;

before(async () => {
  h = await startProviderHarness("delivery", {
    // Codes in 50–150 ms inline unless a test's phone number says otherwise.
    sim: { default: { latency: [{ weight: 1, minMs: 50, maxMs: 150 }] } },
    tune: (s) => {
      s.requestDeadlineMs = 3_000;
    },
  });
});
after(() => h?.close());

async function collect(stream: AsyncIterable<WatchCodeRequestResponse>) {
  const seen: WatchCodeRequestResponse[] = [];
  for await (const m of stream) seen.push(m);
  return seen;
}

describe("delivery", () => {
  test("a web request is delivered on the watch stream, which shows each state once and ends with the code", async () => {
    const phone = newPhone();
    // Acknowledged at 300 ms, called back at 800 ms: every state has time to be seen.
    await h.sim.configure({ default: { latency: [{ weight: 1, minMs: 50, maxMs: 150 }] }, byPhoneNumber: { [phone]: { inlineWindowMs: 300, latency: [{ weight: 1, minMs: 800, maxMs: 800 }] } } });
    const token = await h.tokens.customer("user-web", phone);
    const { codeRequest } = await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.WEB, requestId: "web-1" }, bearer(token));
    assert.ok(codeRequest);
    assert.equal(codeRequest.state, CodeRequestState.PENDING);
    assert.equal(codeRequest.statusMessage, "Your request is being processed, within 30 seconds");
    assert.equal(codeRequest.userId, "user-web");
    assert.equal(codeRequest.phoneNumber, phone);

    const seen = await collect(h.client.watchCodeRequest({ codeRequestId: codeRequest.id }, bearer(token)));
    const states = seen.map((m) => m.codeRequest!.state);
    assert.deepEqual(states, [CodeRequestState.PENDING, CodeRequestState.ACKNOWLEDGED, CodeRequestState.SUCCEEDED, CodeRequestState.DELIVERED].filter((s) => states.includes(s)));
    assert.equal(states[0], CodeRequestState.PENDING);
    assert.ok(states.includes(CodeRequestState.ACKNOWLEDGED), `acknowledged seen: ${states}`);
    const last = seen[seen.length - 1].codeRequest!;
    assert.equal(last.state, CodeRequestState.DELIVERED);
    assert.deepEqual(seen.slice(0, -1).map((m) => m.codeRequest!.code), seen.slice(0, -1).map(() => ""), "the customer sees no code before it is delivered");
    const simRequest = await h.sim.request(codeRequest.id);
    assert.equal(last.code, simRequest?.voucherCode, "the code on the stream is the provider's");
    assert.equal(last.providerStatus, ProviderCodeStatus.SUCCESS);
    assert.equal(last.statusMessage, "Thank you for using our services, your voucher code is ready.");
    assert.ok(last.acknowledgeTime && last.receiveTime && last.deliverTime);

    // Polling clients get the same from GetCodeRequest; watching a finished request sends one message.
    const polled = (await h.client.getCodeRequest({ codeRequestId: codeRequest.id }, bearer(token))).codeRequest!;
    assert.equal(polled.code, last.code);
    const again = await collect(h.client.watchCodeRequest({ codeRequestId: codeRequest.id }, bearer(token)));
    assert.deepEqual(again.map((m) => m.codeRequest!.state), [CodeRequestState.DELIVERED]);

    const events = (await h.codeReceivedEvents()).filter((e) => e.codeRequestId === codeRequest.id);
    assert.equal(events.length, 1, "one code_received event");
    assert.equal(events[0].code, last.code);
    assert.equal(events[0].phoneNumber, phone);
    assert.equal(events[0].userId, "user-web");
    assert.equal(events[0].channel, DeliveryChannel.WEB);
    assert.equal(events[0].status, ProviderCodeStatus.SUCCESS);
  });

  test("an SMS request is texted through the sink and listed by ListSentSms", async () => {
    const phone = newPhone();
    const token = await h.tokens.customer("user-sms", phone);
    const { codeRequest } = await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: "sms-1" }, bearer(token));
    const done = await h.waitForState(codeRequest!.id, ["delivered"]);
    const admin = await h.tokens.admin();
    const { sentSms } = await h.client.listSentSms({ codeRequestId: codeRequest!.id }, bearer(admin));
    assert.equal(sentSms.length, 1);
    assert.equal(sentSms[0].phoneNumber, phone);
    assert.equal(sentSms[0].body, `Vouch: your voucher code is ${done.code}. Thank you for using our services.`);
    const byPhone = await h.client.listSentSms({ phoneNumber: phone }, bearer(admin));
    assert.deepEqual(byPhone.sentSms.map((s) => s.id), [sentSms[0].id]);
    await expectError(h.client.listSentSms({}, bearer(token)), Code.PermissionDenied, "ADMIN_REQUIRED");
    assert.equal((await h.codeReceivedEvents()).filter((e) => e.codeRequestId === codeRequest!.id).length, 1);
  });

  test("a code is delivered only once the voucher service stored it: while its store is blocked the customer waits, then gets the stored code", async () => {
    const blocker = new pg.Client({ connectionString: h.config.databaseUrl });
    await blocker.connect();
    const phone = newPhone();
    const token = await h.tokens.customer("user-gated", phone);
    let web: string, sms: string;
    try {
      await blocker.query("BEGIN");
      await blocker.query("LOCK TABLE voucher.purchased_codes IN SHARE ROW EXCLUSIVE MODE");
      web = (await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.WEB, requestId: "gated-web" }, bearer(token))).codeRequest!.id;
      sms = (await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: "gated-sms" }, bearer(token))).codeRequest!.id;
      await h.waitForState(web, ["succeeded"]);
      await h.waitForState(sms, ["succeeded"]);
      await waitFor("the voucher service's insert to wait on the lock", async () => {
        const r = await blocker.query("SELECT count(*) AS n FROM pg_locks WHERE NOT granted AND relation = 'voucher.purchased_codes'::regclass");
        return Number(r.rows[0].n) > 0;
      });
      await new Promise((r) => setTimeout(r, 500));
      assert.equal((await h.row(web)).state, "succeeded", "not delivered while the code is not stored");
      assert.equal((await h.row(sms)).state, "succeeded");
      const shown = (await h.client.getCodeRequest({ codeRequestId: web }, bearer(token))).codeRequest!;
      assert.equal(shown.state, CodeRequestState.SUCCEEDED);
      assert.equal(shown.code, "", "no code for the customer yet");
      const admin = await h.tokens.admin();
      assert.notEqual((await h.client.getCodeRequest({ codeRequestId: web }, bearer(admin))).codeRequest!.code, "", "operators see the received code");
      assert.equal((await h.client.listSentSms({ codeRequestId: sms }, bearer(admin))).sentSms.length, 0, "nothing texted yet");
    } finally {
      await blocker.query("COMMIT").catch(() => {});
      await blocker.end();
    }
    for (const id of [web, sms]) {
      const row = await h.waitForState(id, ["delivered"]);
      const { purchasedCodes } = await h.vouchers.listPurchasedCodes({ phoneNumber: phone }, bearer(token));
      const stored = purchasedCodes.find((p) => p.codeRequestId === id);
      assert.ok(stored, "the delivered code is stored for the phone number");
      assert.equal(stored.code, row.code);
      assert.ok(stored.createTime && timestampDate(stored.createTime) <= row.deliveredAt!, "stored before it was delivered");
    }
    assert.equal((await h.client.getCodeRequest({ codeRequestId: web }, bearer(token))).codeRequest!.code, (await h.row(web)).code);
  });

  test("a request never called back expires at its deadline: the web stream ends EXPIRED and an SMS customer is texted", async () => {
    const webPhone = newPhone();
    const smsPhone = newPhone();
    const never = { inlineWindowMs: 100, latency: [{ weight: 1, minMs: 500, maxMs: 500 }], noCallbackRate: 1 };
    await h.sim.configure({ default: { latency: [{ weight: 1, minMs: 50, maxMs: 150 }] }, byPhoneNumber: { [webPhone]: never, [smsPhone]: never } });
    const token = await h.tokens.customer("user-expiry");
    const web = (await h.client.requestCode({ phoneNumber: webPhone, channel: DeliveryChannel.WEB, requestId: "exp-web" }, bearer(token))).codeRequest!;
    const sms = (await h.client.requestCode({ phoneNumber: smsPhone, channel: DeliveryChannel.SMS, requestId: "exp-sms" }, bearer(token))).codeRequest!;

    const seen = await collect(h.client.watchCodeRequest({ codeRequestId: web.id }, bearer(token)));
    const last = seen[seen.length - 1].codeRequest!;
    assert.equal(last.state, CodeRequestState.EXPIRED);
    assert.equal(last.statusMessage, "Sorry, your voucher code did not arrive in time. Please try again.");
    assert.equal(last.code, "");

    await h.waitForState(sms.id, ["expired"]);
    const admin = await h.tokens.admin();
    const texts = await waitFor("the expiry SMS", async () => {
      const { sentSms } = await h.client.listSentSms({ codeRequestId: sms.id }, bearer(admin));
      return sentSms.length ? sentSms : undefined;
    });
    assert.equal(texts.length, 1);
    assert.equal(texts[0].body, "Vouch: sorry, your voucher code did not arrive in time. Please try again.");
    assert.equal((await h.client.listSentSms({ codeRequestId: web.id }, bearer(admin))).sentSms.length, 0, "web customers are not texted");
    const events = await h.codeReceivedEvents();
    assert.equal(events.filter((e) => e.codeRequestId === web.id || e.codeRequestId === sms.id).length, 0, "no code, no event");
  });

  test("three replicas share the work: every request ends delivered once, with one event and one SMS each", async () => {
    await h.sim.configure({ default: { latency: [{ weight: 1, minMs: 10, maxMs: 100 }] } });
    await h.addReplica();
    await h.addReplica();
    const token = await h.tokens.customer("user-replicas");
    const ids = await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        const { codeRequest } = await h.client.requestCode({ phoneNumber: newPhone(), channel: i % 2 ? DeliveryChannel.SMS : DeliveryChannel.WEB, requestId: `rep-${i}` }, bearer(token));
        return codeRequest!.id;
      }),
    );
    for (const id of ids) await h.waitForState(id, ["delivered"]);
    const events = (await h.codeReceivedEvents()).filter((e) => ids.includes(e.codeRequestId));
    assert.equal(events.length, ids.length);
    assert.equal(new Set(events.map((e) => e.codeRequestId)).size, ids.length);
    const admin = await h.tokens.admin();
    for (const [i, id] of ids.entries()) {
      const { sentSms } = await h.client.listSentSms({ codeRequestId: id }, bearer(admin));
      assert.equal(sentSms.length, i % 2 ? 1 : 0);
    }
  });
});
