// Campaign administration, claims, eligibility, the public list, bad input and the
// access policy.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CampaignState, GrantState, IneligibilityReason, PromotionService } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { newId } from "../../kit/ids.js";
import { campaignInput, expectError, startHarness, violatedFields, waitFor, type Harness } from "./harness.js";

let h: Harness;
before(async () => {
  h = await startHarness("campaigns");
});
after(async () => {
  await h?.close();
});

const CLAIM = 2;

describe("campaigns", () => {
  test("a campaign is created with its voucher book, activated, paused and ended; a retried create makes one campaign", async () => {
    const admin = await h.admin();
    const requestId = newId();
    const first = (await h.client.createCampaign({ campaign: campaignInput({ quota: 10 }), requestId }, admin)).campaign!;
    const again = (await h.client.createCampaign({ campaign: campaignInput({ quota: 10 }), requestId }, admin)).campaign!;
    assert.equal(again.id, first.id);
    assert.equal(first.state, CampaignState.DRAFT);
    assert.equal(first.remainingCount, 10);
    await expectError(h.client.createCampaign({ campaign: campaignInput({ quota: 11 }), requestId }, admin), Code.AlreadyExists, "REQUEST_ID_REUSED");
    const book = (await h.voucherClient.getBook({ bookId: first.bookId }, admin)).book!;
    assert.equal(book.usesPerCode, 1);

    assert.equal((await h.client.activateCampaign({ campaignId: first.id }, admin)).campaign!.state, CampaignState.ACTIVE);
    assert.equal((await h.client.activateCampaign({ campaignId: first.id }, admin)).campaign!.state, CampaignState.ACTIVE, "activating twice is fine");
    assert.equal((await h.client.pauseCampaign({ campaignId: first.id }, admin)).campaign!.state, CampaignState.PAUSED);
    assert.equal((await h.client.endCampaign({ campaignId: first.id }, admin)).campaign!.state, CampaignState.ENDED);
    await expectError(h.client.activateCampaign({ campaignId: first.id }, admin), Code.FailedPrecondition, "INVALID_CAMPAIGN_STATE_TRANSITION");
    await expectError(h.client.getCampaign({ campaignId: newId() }, admin), Code.NotFound, "CAMPAIGN_NOT_FOUND");
    const listed = await h.client.listCampaigns({ state: CampaignState.ENDED, pageSize: 1 }, admin);
    assert.equal(listed.campaigns[0].id, first.id);
  });

  test("updates: the quota cannot go below the grants made, voucher terms freeze once active", async () => {
    const admin = await h.admin();
    const c = await h.activeCampaign({ type: CLAIM, quota: 2 });
    await h.client.claimCampaign({ campaignId: c.id }, await h.as(newId()));
    await h.client.claimCampaign({ campaignId: c.id }, await h.as(newId()));
    await expectError(
      h.client.updateCampaign({ campaign: { id: c.id, quota: 1 }, updateMask: { paths: ["quota"] } }, admin),
      Code.FailedPrecondition,
      "QUOTA_BELOW_GRANTED",
    );
    await expectError(
      h.client.updateCampaign({ campaign: { ...(campaignInput() as object), id: c.id }, updateMask: { paths: ["voucher_terms"] } }, admin),
      Code.FailedPrecondition,
      "CAMPAIGN_FIELD_IMMUTABLE",
    );
    // Raising the quota adds codes to the book, so the new slots get vouchers too.
    const raised = (await h.client.updateCampaign({ campaign: { id: c.id, quota: 3, name: "Renamed" }, updateMask: { paths: ["quota", "name"] } }, admin)).campaign!;
    assert.equal(raised.quota, 3);
    assert.equal(raised.name, "Renamed");
    const third = (await h.client.claimCampaign({ campaignId: c.id }, await h.as(newId()))).grant!;
    await waitFor("the third grant's voucher", async () => (await h.client.getGrant({ grantId: third.id }, admin)).grant!.state === GrantState.ISSUED);
  });

  test("claims take exactly quota slots under concurrency, once per user, idempotent by request id", async () => {
    const c = await h.activeCampaign({ type: CLAIM, quota: 20 });
    const users = Array.from({ length: 60 }, () => newId());
    const results = await Promise.allSettled(users.map(async (u) => h.client.claimCampaign({ campaignId: c.id, requestId: "claim-1" }, await h.as(u))));
    const won = results.filter((r) => r.status === "fulfilled");
    assert.equal(won.length, 20);
    for (const r of results) if (r.status === "rejected") assert.match(String(r.reason), /every slot/);
    const full = (await h.client.getCampaign({ campaignId: c.id }, await h.admin())).campaign!;
    assert.equal(full.grantedCount, 20);
    assert.equal(full.remainingCount, 0);

    const c2 = await h.activeCampaign({ type: CLAIM, quota: 5 });
    const me = await h.as(newId());
    const first = (await h.client.claimCampaign({ campaignId: c2.id, requestId: "mine" }, me)).grant!;
    const replay = (await h.client.claimCampaign({ campaignId: c2.id, requestId: "mine" }, me)).grant!;
    assert.equal(replay.id, first.id);
    assert.equal(replay.state, GrantState.ISSUED, "the claim carries its voucher");
    assert.ok(replay.voucher?.code);
    const dup = await expectError(h.client.claimCampaign({ campaignId: c2.id, requestId: "other" }, me), Code.AlreadyExists, "ALREADY_PARTICIPATED");
    assert.match(dup.message, /already/);
    const firstLogin = await h.activeCampaign({ quota: 5 });
    await expectError(h.client.claimCampaign({ campaignId: firstLogin.id }, me), Code.FailedPrecondition, "CAMPAIGN_NOT_CLAIMABLE");
  });

  test("eligibility says why not: already participated, full, not a first login, not started, paused, ended", async () => {
    const admin = await h.admin();
    const userId = newId();
    const me = await h.as(userId);
    const claimable = await h.activeCampaign({ type: CLAIM, quota: 5, name: "claimable" });
    const full = await h.activeCampaign({ type: CLAIM, quota: 1, name: "full" });
    await h.client.claimCampaign({ campaignId: full.id }, await h.as(newId()));
    const firstLogin = await h.activeCampaign({ quota: 5, name: "first login" });
    const later = await h.activeCampaign({ type: CLAIM, quota: 5, name: "later", startTime: timestampFromDate(new Date(Date.now() + 3_600_000)) });
    const paused = await h.activeCampaign({ type: CLAIM, quota: 5, name: "paused" });
    await h.client.pauseCampaign({ campaignId: paused.id }, admin);

    const before = await h.client.checkEligibility({ campaignId: claimable.id }, me);
    assert.deepEqual([before.eligibilities[0].eligible, before.eligibilities[0].reason], [true, IneligibilityReason.UNSPECIFIED]);
    const grant = (await h.client.claimCampaign({ campaignId: claimable.id }, me)).grant!;
    const reasonOf = async (campaignId: string) => (await h.client.checkEligibility({ campaignId }, me)).eligibilities[0];
    const participated = await reasonOf(claimable.id);
    assert.equal(participated.reason, IneligibilityReason.ALREADY_PARTICIPATED);
    assert.equal(participated.grantId, grant.id);
    assert.equal((await reasonOf(full.id)).reason, IneligibilityReason.CAMPAIGN_FULL);
    assert.equal((await reasonOf(full.id)).campaign!.remainingCount, 0);
    assert.equal((await reasonOf(firstLogin.id)).reason, IneligibilityReason.NOT_FIRST_LOGIN);
    assert.equal((await reasonOf(later.id)).reason, IneligibilityReason.NOT_STARTED);
    assert.equal((await reasonOf(paused.id)).reason, IneligibilityReason.PAUSED);
    await h.client.endCampaign({ campaignId: later.id }, admin);
    assert.equal((await reasonOf(later.id)).reason, IneligibilityReason.ENDED);
    const all = await h.client.checkEligibility({}, me);
    assert.ok(all.eligibilities.some((e) => e.campaign!.id === claimable.id));
    assert.ok(!all.eligibilities.some((e) => e.campaign!.id === paused.id), "only what ListActiveCampaigns lists");

    const mine = await h.client.listMyPromotions({}, me);
    assert.deepEqual(mine.grants.map((g) => g.id), [grant.id]);
    assert.ok(mine.grants[0].voucher?.code);
    await expectError(h.client.getGrant({ grantId: grant.id }, await h.as(newId())), Code.PermissionDenied, "NOT_OWNER");
    await expectError(h.client.getGrant({ grantId: newId() }, admin), Code.NotFound, "GRANT_NOT_FOUND");
  });

  test("the public list of active campaigns needs no login, works with Connect GET and is cacheable", async () => {
    const c = await h.activeCampaign({ type: CLAIM, quota: 7, name: "public one", endTime: timestampFromDate(new Date(Date.now() + 60_000)) });
    const anonymous = createClient(PromotionService, createConnectTransport({ baseUrl: h.url, httpVersion: "1.1", useHttpGet: true }));
    const listed = await anonymous.listActiveCampaigns({ pageSize: 1000 });
    assert.ok(listed.campaigns.some((x) => x.id === c.id));
    const res = await fetch(`${h.url}/vouch.promotion.v1.PromotionService/ListActiveCampaigns?encoding=json&message=${encodeURIComponent("{}")}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("cache-control") ?? "", /public, max-age=\d+/);
    // Paging walks every active campaign once, soonest ending first.
    const seen: string[] = [];
    let token = "";
    do {
      const p = await anonymous.listActiveCampaigns({ pageSize: 2, pageToken: token });
      seen.push(...p.campaigns.map((x) => x.id));
      token = p.nextPageToken;
    } while (token);
    assert.equal(new Set(seen).size, seen.length);
    assert.equal(seen[0], c.id, "the only campaign with an end comes first");
    // A paused campaign leaves the list at once (the cache is dropped on every change).
    await h.client.pauseCampaign({ campaignId: c.id }, await h.admin());
    assert.ok(!(await anonymous.listActiveCampaigns({ pageSize: 1000 })).campaigns.some((x) => x.id === c.id));
  });

  test("bad input is INVALID_ARGUMENT with a field violation per problem", async () => {
    const admin = await h.admin();
    const err = await expectError(
      h.client.createCampaign(
        {
          campaign: {
            name: " ",
            quota: 0,
            voucherTerms: { discount: { kind: { case: "percentOff", value: { basisPoints: 20_000 } } }, validityDays: 0 },
            startTime: timestampFromDate(new Date(Date.now() + 2_000)),
            endTime: timestampFromDate(new Date()),
          },
          requestId: "x".repeat(65),
        },
        admin,
      ),
      Code.InvalidArgument,
      "INVALID_ARGUMENT",
    );
    assert.deepEqual(violatedFields(err).sort(), [
      "campaign.end_time",
      "campaign.name",
      "campaign.quota",
      "campaign.type",
      "campaign.voucher_terms.discount.percent_off.basis_points",
      "campaign.voucher_terms.validity_days",
      "request_id",
    ]);
    const paging = await expectError(h.client.listCampaigns({ pageSize: -1 }, admin), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violatedFields(paging), ["page_size"]);
    await expectError(h.client.listCampaigns({ pageToken: "garbage" }, admin), Code.InvalidArgument, "INVALID_ARGUMENT");
    const mask = await expectError(h.client.updateCampaign({ campaign: { id: newId() }, updateMask: { paths: ["type"] } }, admin), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violatedFields(mask), ["update_mask"]);
    const badPattern = await expectError(
      h.client.createCampaign({ campaign: campaignInput({ voucherTerms: { ...(campaignInput() as any).voucherTerms, codePattern: "AB" } }) }, admin),
      Code.FailedPrecondition,
      "VOUCHER_BOOK_REJECTED",
    );
    assert.ok(badPattern.message);
  });

  test("the access policy: admins manage, customers claim and read their own, anonymous callers only list", async () => {
    const customer = await h.as(newId());
    await expectError(h.client.createCampaign({ campaign: campaignInput() }, customer), Code.PermissionDenied, "ADMIN_REQUIRED");
    for (const call of [h.client.listCampaigns({}, customer), h.client.listGrants({}, customer), h.client.listTopUps({}, customer), h.client.confirmTransfer({ transferReference: "VCH", amountPaid: { minorUnits: 1n, currencyCode: "VND" }, requestId: "r" }, customer)]) {
      const err = await call.then(() => undefined, (e: unknown) => e as { code: Code });
      assert.equal(err?.code, Code.PermissionDenied);
    }
    for (const call of [h.client.claimCampaign({ campaignId: newId() }), h.client.listMyPromotions({}), h.client.checkEligibility({}), h.client.createTopUp({})]) {
      const err = await call.then(() => undefined, (e: unknown) => e as { code: Code });
      assert.equal(err?.code, Code.Unauthenticated);
    }
    await h.client.listActiveCampaigns({});
  });
});
