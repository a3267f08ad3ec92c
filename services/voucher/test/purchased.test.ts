// Codes bought from the provider: stored once per code request from the
// `provider.code_received` event (a durable consumer) or StorePurchasedCode, announced once
// by `voucher.purchased_code_stored` (the provider delivers on it), and read by the phone's
// owner or an admin.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { sql } from "kysely";
import { CodeReceivedSchema, PurchasedCodeStoredSchema } from "../../../gen/vouch/events/v1/events_pb.js";
import { DeliveryChannel, ProviderCodeStatus } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import { failure, startHarness, waitFor, type Harness } from "./harness.js";

let h: Harness;

before(async () => {
  h = await startHarness("purchased");
});
after(() => h?.close());

const PHONE = "+84901234567";

async function publish(codeRequestId: string, code: string, msgId = randomUUID()) {
  const js = h.voucher.platform.nc.jetstream();
  const event = { codeRequestId, userId: "u-buyer", phoneNumber: PHONE, channel: DeliveryChannel.WEB, code, status: ProviderCodeStatus.SUCCESS, receiveTime: timestampFromDate(new Date()) };
  await js.publish(`${h.subjectPrefix}.provider.code_received`, toBinary(CodeReceivedSchema, create(CodeReceivedSchema, event)), { msgID: msgId });
}

const rowsFor = async (codeRequestId: string) =>
  (await sql<{ code: string }>`SELECT code FROM purchased_codes WHERE code_request_id = ${codeRequestId}`.execute(h.voucher.platform.db)).rows;

/** The `purchased_code_stored` events the voucher service wrote for a code request. */
const storedEvents = async (codeRequestId: string) =>
  (await sql<{ payload: Uint8Array }>`SELECT payload FROM outbox WHERE subject = 'voucher.purchased_code_stored'`.execute(h.voucher.platform.db)).rows
    .map((r) => fromBinary(PurchasedCodeStoredSchema, r.payload))
    .filter((e) => e.codeRequestId === codeRequestId);

describe("purchased codes", () => {
  test("a code_received event is stored once, however often it is delivered or republished", async () => {
    const requestId = randomUUID();
    const msgId = randomUUID();
    await publish(requestId, "PROV-111", msgId);
    await publish(requestId, "PROV-111", msgId); // a duplicate the broker drops
    await publish(requestId, "PROV-111"); // the same code under a new event id
    await waitFor("the code to be stored", async () => (await rowsFor(requestId)).length === 1);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await rowsFor(requestId), [{ code: "PROV-111" }]);
    const announced = await storedEvents(requestId);
    assert.equal(announced.length, 1, "announced once, in the transaction that stored it");
    assert.equal(announced[0].phoneNumber, PHONE);
    assert.equal(announced[0].channel, DeliveryChannel.WEB);
  });

  test("an event carrying a different code for a stored request changes nothing and lands in the dead letters", async () => {
    const requestId = randomUUID();
    await publish(requestId, "PROV-222");
    await waitFor("the first code", async () => (await rowsFor(requestId)).length === 1);
    await publish(requestId, "PROV-999");
    await waitFor("the dead letter", async () => {
      const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM dead_letters WHERE consumer = 'voucher-purchased-codes'`.execute(h.voucher.platform.db);
      return rows[0].n === "1";
    }, 40_000);
    assert.deepEqual(await rowsFor(requestId), [{ code: "PROV-222" }]);
  });

  test("StorePurchasedCode is idempotent by code request id and for services only", async () => {
    const service = await h.service();
    const purchasedCode = { codeRequestId: randomUUID(), userId: "u-buyer", phoneNumber: PHONE, code: "PROV-333", channel: DeliveryChannel.SMS, providerStatus: ProviderCodeStatus.LATE_SUCCESS, receiveTime: timestampFromDate(new Date()) };
    const first = await h.client.storePurchasedCode({ purchasedCode }, service);
    const again = await h.client.storePurchasedCode({ purchasedCode }, service);
    assert.equal(again.purchasedCode?.id, first.purchasedCode?.id);
    assert.equal((await failure(h.client.storePurchasedCode({ purchasedCode: { ...purchasedCode, code: "PROV-OTHER" } }, service))).reason, "REQUEST_ID_REUSED");
    assert.equal((await failure(h.client.storePurchasedCode({ purchasedCode: { ...purchasedCode, phoneNumber: "0901" } }, service))).code, "InvalidArgument");
    assert.equal((await failure(h.client.storePurchasedCode({ purchasedCode }, await h.as("u-buyer")))).reason, "SERVICE_REQUIRED");
    const announced = await storedEvents(purchasedCode.codeRequestId);
    assert.deepEqual(announced.map((e) => [e.purchasedCodeId, e.channel, e.userId]), [[first.purchasedCode?.id, DeliveryChannel.SMS, "u-buyer"]], "one announcement for the stored code, none for the repeat or the refusals");
  });

  test("ListPurchasedCodes: the owner of the phone (token claim) or an admin, newest first and paged; anyone else NOT_OWNER", async () => {
    const service = await h.service();
    const phone = "+84909999999";
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const r = await h.client.storePurchasedCode(
        { purchasedCode: { codeRequestId: randomUUID(), userId: "u-phone", phoneNumber: phone, code: `LIST-${i}`, channel: DeliveryChannel.WEB, providerStatus: ProviderCodeStatus.SUCCESS, receiveTime: timestampFromDate(new Date()) } },
        service,
      );
      ids.push(r.purchasedCode!.id);
    }
    const owner = await h.as("u-phone", ["CUSTOMER"], { phone_number: phone });
    const page1 = await h.client.listPurchasedCodes({ phoneNumber: phone, pageSize: 2 }, owner);
    const page2 = await h.client.listPurchasedCodes({ phoneNumber: phone, pageSize: 2, pageToken: page1.nextPageToken }, owner);
    assert.deepEqual([...page1.purchasedCodes, ...page2.purchasedCodes].map((p) => p.code), ["LIST-2", "LIST-1", "LIST-0"]);
    assert.equal((await h.client.listPurchasedCodes({ phoneNumber: phone }, await h.admin())).purchasedCodes.length, 3);
    const stranger = await h.as("u-stranger", ["CUSTOMER"], { phone_number: "+84900000000" });
    assert.equal((await failure(h.client.listPurchasedCodes({ phoneNumber: phone }, stranger))).reason, "NOT_OWNER");
    assert.equal((await failure(h.client.listPurchasedCodes({ phoneNumber: "0909999999" }, owner))).code, "InvalidArgument");
    assert.equal((await failure(h.client.listPurchasedCodes({ phoneNumber: phone, pageSize: -1 }, owner))).code, "InvalidArgument");
    assert.equal((await h.client.getPurchasedCode({ purchasedCodeId: ids[0] }, owner)).purchasedCode?.code, "LIST-0");
    assert.equal((await failure(h.client.getPurchasedCode({ purchasedCodeId: ids[0] }, stranger))).reason, "NOT_OWNER");
    assert.equal((await failure(h.client.getPurchasedCode({ purchasedCodeId: "nope" }, await h.admin()))).reason, "PURCHASED_CODE_NOT_FOUND");
  });
});
