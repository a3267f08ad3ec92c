// The ProviderService rpcs around the flow: input validation, request ids, ownership,
// admin lists, bounded retries ending FAILED and the admin retry, and the SMS adapters.
import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, createContextValues, type HandlerContext } from "@connectrpc/connect";
import { BadRequestSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { CodeRequestState, RequestCodeRequestSchema } from "../../../gen/vouch/provider/v1/provider_pb.js";
import { DeliveryChannel } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import { VouchError } from "../../kit/errors.js";
import { callerKey } from "../../kit/context.js";
import { createLogger } from "../../kit/log.js";
import { createRateLimiter } from "../../kit/ratelimit.js";
import { createProviderHandlers } from "../handlers.js";
import { createHttpSmsGateway, SmsRejected } from "../sms.js";
import { bearer, expectError, newPhone, startProviderHarness, waitFor, type ProviderHarness } from "./harness.js";

const FAST = { latency: [{ weight: 1, minMs: 20, maxMs: 50 }] };

let h: ProviderHarness;
before(async () => {
  h = await startProviderHarness("api", {
    sim: { default: FAST },
    tune: (s) => {
      s.maxAttempts = 3;
      s.retryBackoffMs = [50, 100];
      s.breaker.volumeThreshold = 1_000; // never opens here: the attempt limit is under test
    },
  });
});
after(() => h?.close());

describe("RequestCode", () => {
  test("refuses a bad phone number, a missing channel and a missing request id, naming each field", async () => {
    const token = await h.tokens.customer();
    const err = await expectError(h.client.requestCode({ phoneNumber: "0909123456", channel: DeliveryChannel.UNSPECIFIED, requestId: "" }, bearer(token)), Code.InvalidArgument, "INVALID_ARGUMENT");
    const violations = err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => [v.field, v.reason]);
    assert.deepEqual(violations, [
      ["phone_number", "PHONE_NUMBER_INVALID"],
      ["channel", "CHANNEL_REQUIRED"],
      ["request_id", "REQUEST_ID_REQUIRED"],
    ]);
    await expectError(h.client.requestCode({ phoneNumber: newPhone(), channel: DeliveryChannel.WEB, requestId: "x".repeat(65) }, bearer(token)), Code.InvalidArgument, "INVALID_ARGUMENT");
    await expectError(h.client.requestCode({ phoneNumber: newPhone(), channel: DeliveryChannel.WEB, requestId: "r" }), Code.Unauthenticated, "TOKEN_MISSING");
  });

  test("a retried request id returns the same request and buys one code; reused for another request it is ALREADY_EXISTS", async () => {
    const phone = newPhone();
    const token = await h.tokens.customer("user-idem");
    const first = (await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: "same" }, bearer(token))).codeRequest!;
    const again = await Promise.all(Array.from({ length: 5 }, () => h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: "same" }, bearer(token))));
    assert.deepEqual(new Set(again.map((r) => r.codeRequest!.id)), new Set([first.id]));
    await expectError(h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.WEB, requestId: "same" }, bearer(token)), Code.AlreadyExists, "REQUEST_ID_REUSED");
    // The same id from someone else is their own request.
    const other = (await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: "same" }, bearer(await h.tokens.customer("user-idem-2")))).codeRequest!;
    assert.notEqual(other.id, first.id);

    await h.waitForState(first.id, ["delivered"]);
    const simCalls = (await h.sim.calls()).filter((c) => c.requestId === first.id);
    assert.equal(simCalls.length, 1, "the provider was asked once");
    const admin = await h.tokens.admin();
    const { codeRequests } = await h.client.listCodeRequests({ phoneNumber: phone, userId: "user-idem" }, bearer(admin));
    assert.deepEqual(codeRequests.map((r) => r.id), [first.id]);
  });
});

describe("RequestCode limits", () => {
  test("too many requests by one user, or for one phone number, are RESOURCE_EXHAUSTED with RetryInfo and buy nothing", async () => {
    const { redis, log, metrics, db } = h.provider.platform;
    const limiter = (name: string, burst: number) => createRateLimiter(redis, { name: `${name}-${Date.now()}`, ratePerPeriod: 1, periodMs: 60_000, burst, log, registry: metrics.registry });
    const handlers = createProviderHandlers({
      db,
      gateway: h.provider.gateway,
      feed: { subscribe: () => () => {}, stop: async () => {} },
      sms: h.provider.sms,
      requestDeadlineMs: 60_000,
      watchMaxMs: 1_000,
      limits: { perUser: limiter("user", 3), perPhoneNumber: limiter("phone", 2) },
    });
    const callerCtx = (subject: string) =>
      ({ values: createContextValues().set(callerKey, { subject, roles: ["CUSTOMER"], tokenId: "t", issuedAt: new Date(), expiresAt: new Date() }) }) as unknown as HandlerContext;
    const ask = (subject: string, phoneNumber: string, requestId: string) =>
      Promise.resolve().then(() => handlers.requestCode(create(RequestCodeRequestSchema, { phoneNumber, channel: DeliveryChannel.WEB, requestId }), callerCtx(subject)));
    const [p1, p2, p3] = [newPhone(), newPhone(), newPhone()];
    // One phone number: two, then refused, whoever asks.
    await ask("limit-a", p1, "l1");
    await ask("limit-b", p1, "l2");
    const byPhone = await ask("limit-c", p1, "l3").then(() => undefined, (e: unknown) => e);
    assert.ok(byPhone instanceof VouchError && byPhone.code === Code.ResourceExhausted && byPhone.reason === "RATE_LIMITED", String(byPhone));
    assert.ok((byPhone.options.retryAfterMs ?? 0) > 0);
    // One user: three (on other numbers), then refused.
    await ask("limit-d", p2, "l4");
    await ask("limit-d", p3, "l5");
    await ask("limit-d", newPhone(), "l6");
    const byUser = await ask("limit-d", newPhone(), "l7").then(() => undefined, (e: unknown) => e);
    assert.ok(byUser instanceof VouchError && byUser.reason === "RATE_LIMITED");
    const refused = await db.selectFrom("code_requests").select("id").where("user_id", "in", ["limit-c"]).execute();
    assert.equal(refused.length, 0, "a refused request stores nothing");
  });
});

describe("reading requests", () => {
  test("a customer reads only their own requests, and cannot tell whether another id exists; admins can", async () => {
    const owner = await h.tokens.customer("user-owner");
    const stranger = await h.tokens.customer("user-stranger");
    const admin = await h.tokens.admin();
    const { codeRequest } = await h.client.requestCode({ phoneNumber: newPhone(), channel: DeliveryChannel.WEB, requestId: "own" }, bearer(owner));
    const id = codeRequest!.id;
    assert.equal((await h.client.getCodeRequest({ codeRequestId: id }, bearer(owner))).codeRequest!.id, id);
    assert.equal((await h.client.getCodeRequest({ codeRequestId: id }, bearer(admin))).codeRequest!.id, id);
    await expectError(h.client.getCodeRequest({ codeRequestId: id }, bearer(stranger)), Code.PermissionDenied, "NOT_OWNER");
    await expectError(h.client.getCodeRequest({ codeRequestId: "01900000-0000-7000-8000-000000000000" }, bearer(stranger)), Code.PermissionDenied, "NOT_OWNER");
    await expectError(h.client.getCodeRequest({ codeRequestId: "01900000-0000-7000-8000-000000000000" }, bearer(admin)), Code.NotFound, "CODE_REQUEST_NOT_FOUND");
    const watch = async () => {
      for await (const _ of h.client.watchCodeRequest({ codeRequestId: id }, bearer(stranger))) assert.fail("no message for a stranger");
    };
    await expectError(watch(), Code.PermissionDenied, "NOT_OWNER");
  });

  test("ListCodeRequests pages newest first through a filter, and refuses a page token of another filter", async () => {
    const phone = newPhone();
    const token = await h.tokens.customer("user-list");
    const admin = await h.tokens.admin();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.WEB, requestId: `list-${i}` }, bearer(token))).codeRequest!.id);
    for (const id of ids) await h.waitForState(id, ["delivered"]);

    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await h.client.listCodeRequests({ phoneNumber: phone, state: CodeRequestState.DELIVERED, pageSize: 2, pageToken }, bearer(admin));
      assert.ok(page.codeRequests.length <= 2);
      seen.push(...page.codeRequests.map((r) => r.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    assert.deepEqual(seen, [...ids].reverse());

    const first = await h.client.listCodeRequests({ phoneNumber: phone, pageSize: 2 }, bearer(admin));
    await expectError(h.client.listCodeRequests({ phoneNumber: newPhone(), pageSize: 2, pageToken: first.nextPageToken }, bearer(admin)), Code.InvalidArgument, "INVALID_ARGUMENT");
    await expectError(h.client.listCodeRequests({ pageSize: -1 }, bearer(admin)), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.equal((await h.client.listCodeRequests({ phoneNumber: phone, state: CodeRequestState.FAILED }, bearer(admin))).codeRequests.length, 0);
    await expectError(h.client.listCodeRequests({}, bearer(token)), Code.PermissionDenied, "ADMIN_REQUIRED");
  });
});

describe("failures and retries", () => {
  test("a request the provider keeps failing ends FAILED after the attempt limit, its SMS customer is told, and an admin retry succeeds", async () => {
    const phone = newPhone();
    await h.sim.configure({ default: FAST, byPhoneNumber: { [phone]: { errorRate: 1 } } });
    const token = await h.tokens.customer("user-failing");
    const admin = await h.tokens.admin();
    const { codeRequest } = await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: "failing" }, bearer(token));
    const id = codeRequest!.id;
    const failed = await h.waitForState(id, ["failed"]);
    assert.equal(failed.attemptCount, 3);
    assert.match(failed.failureMessage ?? "", /the provider failed 3 times; last: provider answered HTTP 500/);
    assert.equal((await h.sim.calls()).filter((c) => c.requestId === id).length, 3, "three calls, no more");
    const notice = await waitFor("the failure SMS", async () => (await h.client.listSentSms({ codeRequestId: id }, bearer(admin))).sentSms[0]);
    assert.equal(notice.body, "Vouch: sorry, we could not get your voucher code. Please try again later.");
    const polled = (await h.client.getCodeRequest({ codeRequestId: id }, bearer(token))).codeRequest!;
    assert.equal(polled.state, CodeRequestState.FAILED);
    assert.equal(polled.statusMessage, "Sorry, we could not get your voucher code from our provider. Please try again later.");

    // Only FAILED requests can be retried; the retry is a new request, idempotent by request id.
    const { codeRequest: healthy } = await h.client.requestCode({ phoneNumber: newPhone(), channel: DeliveryChannel.WEB, requestId: "healthy" }, bearer(token));
    await h.waitForState(healthy!.id, ["delivered"]);
    const notRetryable = await expectError(h.client.retryCodeRequest({ codeRequestId: healthy!.id, requestId: "r0" }, bearer(admin)), Code.FailedPrecondition, "CODE_REQUEST_NOT_RETRYABLE");
    assert.match(notRetryable.message, /DELIVERED/);
    await expectError(h.client.retryCodeRequest({ codeRequestId: "01900000-0000-7000-8000-000000000000", requestId: "r1" }, bearer(admin)), Code.NotFound, "CODE_REQUEST_NOT_FOUND");
    await expectError(h.client.retryCodeRequest({ codeRequestId: id, requestId: "r2" }, bearer(token)), Code.PermissionDenied, "ADMIN_REQUIRED");

    await h.sim.configure({ default: FAST });
    const retried = (await h.client.retryCodeRequest({ codeRequestId: id, requestId: "r3" }, bearer(admin))).codeRequest!;
    assert.equal((await h.client.retryCodeRequest({ codeRequestId: id, requestId: "r3" }, bearer(admin))).codeRequest!.id, retried.id);
    assert.equal(retried.retryOfCodeRequestId, id);
    assert.equal(retried.userId, "user-failing");
    assert.equal(retried.phoneNumber, phone);
    assert.equal(retried.channel, DeliveryChannel.SMS);
    const done = await h.waitForState(retried.id, ["delivered"]);
    assert.equal((await h.row(id)).state, "failed", "the failed request keeps its one final state");
    const texts = (await h.client.listSentSms({ phoneNumber: phone }, bearer(admin))).sentSms.map((s) => s.body);
    assert.deepEqual(texts, [`Vouch: your voucher code is ${done.code}. Thank you for using our services.`, notice.body]);
    // The retry's owner reads it like their own request.
    assert.equal((await h.client.getCodeRequest({ codeRequestId: retried.id }, bearer(token))).codeRequest!.code, done.code);
  });
});

describe("SMS adapters", () => {
  test("the HTTP gateway posts the message as JSON with its token; a 4xx is a refusal, a 5xx a failure to retry", async () => {
    const received: { headers: http.IncomingHttpHeaders; body: unknown }[] = [];
    let status = 202;
    const server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        received.push({ headers: req.headers, body: JSON.parse(body) });
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/send`;
      const gateway = createHttpSmsGateway({ url, token: "gw-secret", log: createLogger("test", "silent") });
      assert.equal(gateway.kind, "gateway");
      const message = { to: "+84909123456", body: "Vouch: your voucher code is X.", codeRequestId: "req-1", purpose: "code" as const };
      await gateway.send(undefined as never, message);
      assert.deepEqual(received[0].body, { to: "+84909123456", body: "Vouch: your voucher code is X.", reference: "req-1:code" });
      assert.equal(received[0].headers.authorization, "Bearer gw-secret");
      assert.equal(received[0].headers["idempotency-key"], "req-1:code");
      status = 400;
      await assert.rejects(gateway.send(undefined as never, message), SmsRejected);
      status = 503;
      await assert.rejects(gateway.send(undefined as never, message), (err: unknown) => !(err instanceof SmsRejected) && /HTTP 503/.test(String(err)));
    } finally {
      server.close();
    }
  });

  test("ListSentSms says the sink is off when a real gateway sends", async () => {
    const handlers = createProviderHandlers({
      db: h.provider.platform.db,
      gateway: h.provider.gateway,
      feed: { subscribe: () => () => {}, stop: async () => {} },
      sms: createHttpSmsGateway({ url: "http://127.0.0.1:9/", log: createLogger("test", "silent") }),
      requestDeadlineMs: 1_000,
      watchMaxMs: 1_000,
    });
    await assert.rejects(
      Promise.resolve().then(() => handlers.listSentSms({} as never, {} as never)),
      (err: unknown) => err instanceof VouchError && err.code === Code.FailedPrecondition && err.reason === "SMS_SINK_DISABLED",
    );
  });
});
