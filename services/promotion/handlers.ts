// PromotionService: protocol in, use case, protocol out. Access policies (public, admin,
// authenticated) are declared in promotion.proto and enforced by the shared interceptor
// before any of these run; what is left here is "a customer sees only their own".
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  CampaignState as CampaignStateEnum,
  CampaignType as CampaignTypeEnum,
  ClaimCampaignRequestSchema,
  ClaimCampaignResponseSchema,
  CreateCampaignRequestSchema,
  CreateCampaignResponseSchema,
  CreateTopUpRequestSchema,
  GrantState as GrantStateEnum,
  IneligibilityReason,
  ListActiveCampaignsResponseSchema,
  PromotionService,
  TopUpState as TopUpStateEnum,
  type CampaignSchema,
  type GrantSchema,
  type TopUpSchema,
} from "../../gen/vouch/promotion/v1/promotion_pb.js";
import type { Voucher as VoucherMessage } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import { requireCaller, type Caller } from "../kit/context.js";
import { fingerprintRequest, runIdempotent } from "../kit/idempotency.js";
import { decodePageToken, page, pageSize } from "../kit/paging.js";
import type { Redis } from "../kit/redis.js";
import type { Kysely } from "kysely";
import type { Campaigns } from "./campaigns.js";
import { confirmationFingerprint } from "./confirmation.js";
import { ineligibility, type Campaign, type CampaignState, type CampaignType, type Grant, type GrantState, type Ineligibility, type TopUp, type TopUpState } from "./domain/model.js";
import { normalizePhone } from "./domain/phone.js";
import type { Grants } from "./grants.js";
import * as input from "./input.js";
import type { PromotionSettings } from "./settings.js";
import { activePosition, listActiveCampaigns, listCampaigns, type ActivePosition, type CampaignChanges } from "./store/campaigns.js";
import { findGrant, grantIdsOf, listGrants } from "./store/grants.js";
import type { PromotionDB } from "./store/schema.js";
import { listTopUps } from "./store/topups.js";
import type { TopUps } from "./topups.js";
import { moneyOut, discountOut, type VoucherGateway } from "./voucher-client.js";
import { notFound, permissionDenied } from "../kit/errors.js";

export interface PromotionRoutesDeps {
  db: Kysely<PromotionDB>;
  redis: Redis;
  campaigns: Campaigns;
  grants: Grants;
  topUps: TopUps;
  voucher: VoucherGateway;
  settings: PromotionSettings;
}

// ── domain ↔ protocol ───────────────────────────────────────────────────────────────────

const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);

const CAMPAIGN_TYPE: Record<CampaignType, CampaignTypeEnum> = { first_login: CampaignTypeEnum.FIRST_LOGIN, claim: CampaignTypeEnum.CLAIM };
const CAMPAIGN_STATE: Record<CampaignState, CampaignStateEnum> = {
  draft: CampaignStateEnum.DRAFT,
  active: CampaignStateEnum.ACTIVE,
  paused: CampaignStateEnum.PAUSED,
  ended: CampaignStateEnum.ENDED,
};
const GRANT_STATE: Record<GrantState, GrantStateEnum> = { pending_voucher: GrantStateEnum.PENDING_VOUCHER, issued: GrantStateEnum.ISSUED };
const TOP_UP_STATE: Record<TopUpState, TopUpStateEnum> = {
  awaiting_transfer: TopUpStateEnum.AWAITING_TRANSFER,
  processing: TopUpStateEnum.PROCESSING,
  completed: TopUpStateEnum.COMPLETED,
  expired: TopUpStateEnum.EXPIRED,
  cancelled: TopUpStateEnum.CANCELLED,
  failed: TopUpStateEnum.FAILED,
};
const INELIGIBILITY: Record<Ineligibility, IneligibilityReason> = {
  ALREADY_PARTICIPATED: IneligibilityReason.ALREADY_PARTICIPATED,
  CAMPAIGN_FULL: IneligibilityReason.CAMPAIGN_FULL,
  NOT_FIRST_LOGIN: IneligibilityReason.NOT_FIRST_LOGIN,
  NOT_STARTED: IneligibilityReason.NOT_STARTED,
  ENDED: IneligibilityReason.ENDED,
  PAUSED: IneligibilityReason.PAUSED,
};
const reverse = <K extends string, V>(m: Record<K, V>) => new Map<V, K>(Object.entries(m).map(([k, v]) => [v as V, k as K]));
const CAMPAIGN_TYPE_IN = reverse(CAMPAIGN_TYPE);
const CAMPAIGN_STATE_IN = reverse(CAMPAIGN_STATE);
const GRANT_STATE_IN = reverse(GRANT_STATE);
const TOP_UP_STATE_IN = reverse(TOP_UP_STATE);

function campaignOut(c: Campaign): MessageInitShape<typeof CampaignSchema> {
  // An ACTIVE campaign past its end is ENDED for everyone, before the sweep records it.
  const state = c.state !== "ended" && c.endAt && c.endAt <= new Date() ? "ended" : c.state;
  return {
    id: c.id,
    name: c.name,
    description: c.description,
    type: CAMPAIGN_TYPE[c.type],
    quota: c.quota,
    voucherTerms: {
      discount: discountOut(c.terms.discount),
      minimumTopUpAmount: moneyOut(c.terms.minimum),
      validityDays: c.terms.validityDays,
      codePattern: c.terms.codePattern,
    },
    startTime: ts(c.startAt),
    endTime: ts(c.endAt),
    state: CAMPAIGN_STATE[state],
    bookId: c.bookId,
    grantedCount: c.granted,
    remainingCount: Math.max(0, c.quota - c.granted),
    createTime: ts(c.createdAt),
    updateTime: ts(c.updatedAt),
  };
}

function grantOut(g: Grant, vouchers: Map<string, VoucherMessage> | undefined): MessageInitShape<typeof GrantSchema> {
  return {
    id: g.id,
    campaignId: g.campaignId,
    campaignName: g.campaignName,
    campaignType: CAMPAIGN_TYPE[g.campaignType],
    userId: g.userId,
    state: GRANT_STATE[g.state],
    voucherId: g.voucherId ?? "",
    voucher: g.voucherId ? vouchers?.get(g.voucherId) : undefined,
    createTime: ts(g.createdAt),
    issueTime: ts(g.issuedAt),
  };
}

// ── the service ─────────────────────────────────────────────────────────────────────────

const privileged = (caller: Caller) => caller.roles.some((r) => r === "ADMIN" || r === "SERVICE");
const actorOf = (ctx: HandlerContext) => {
  const caller = requireCaller(ctx);
  return { subject: caller.subject, admin: privileged(caller) };
};

const ACTIVE_CACHE_GENERATION = "promotion:active:generation";

export function promotionRoutes(deps: PromotionRoutesDeps): (router: ConnectRouter) => void {
  const { db, redis, campaigns, grants, topUps, voucher, settings } = deps;

  function topUpOut(t: TopUp): MessageInitShape<typeof TopUpSchema> {
    return {
      id: t.id,
      userId: t.userId,
      phoneNumber: t.phoneNumber,
      amount: moneyOut(t.amount),
      voucherCode: t.voucherCode ?? "",
      discountAmount: moneyOut(t.discount),
      transferInstructions: {
        amount: moneyOut(t.pay),
        reference: t.reference,
        deadlineTime: ts(t.deadlineAt),
        beneficiaryName: settings.bank.beneficiaryName,
        bankName: settings.bank.bankName,
        accountNumber: settings.bank.accountNumber,
      },
      state: TOP_UP_STATE[t.state],
      redemptionId: t.redemptionId ?? "",
      operatorReference: t.operatorReference ?? "",
      failureMessage: t.failureMessage ?? "",
      createTime: ts(t.createdAt),
      updateTime: ts(t.updatedAt),
      confirmTime: ts(t.confirmedAt),
      finishTime: ts(t.finishedAt),
    };
  }

  async function grantsOut(list: Grant[]) {
    const vouchers = await voucher.batchGet(list.flatMap((g) => (g.voucherId ? [g.voucherId] : [])));
    return list.map((g) => grantOut(g, vouchers));
  }

  /** The public list is the same for everyone: cached in Redis (dropped on every campaign change) and by HTTP caches. */
  async function cachedActivePage(key: string, build: () => Promise<Uint8Array>): Promise<Uint8Array> {
    if (settings.activeCacheMs <= 0) return build();
    let cacheKey: string | undefined;
    try {
      const generation = (await redis.get(ACTIVE_CACHE_GENERATION)) ?? "0";
      cacheKey = `promotion:active:${generation}:${key}`;
      const hit = await redis.getBuffer(cacheKey);
      if (hit) return hit;
    } catch {
      // Redis is only a cache: read from Postgres.
    }
    const bytes = await build();
    if (cacheKey) await redis.set(cacheKey, Buffer.from(bytes), "PX", settings.activeCacheMs).catch(() => {});
    return bytes;
  }

  const impl: ServiceImpl<typeof PromotionService> = {
    // ── campaigns (admin) ──
    async createCampaign(req, ctx) {
      const caller = requireCaller(ctx);
      const fields = input.validated((v) => {
        const c = req.campaign;
        input.requestId(v, req.requestId);
        if (!c) {
          v.add("campaign", "REQUIRED", "is required");
          return undefined;
        }
        const type = CAMPAIGN_TYPE_IN.get(c.type);
        if (!type) v.add("campaign.type", "TYPE_REQUIRED", "must be CAMPAIGN_TYPE_FIRST_LOGIN or CAMPAIGN_TYPE_CLAIM");
        const startAt = input.date(c.startTime);
        const endAt = input.date(c.endTime);
        input.windowOf(v, "campaign", startAt, endAt);
        return {
          name: input.name(v, "campaign.name", c.name),
          description: input.description(v, "campaign.description", c.description),
          type: type ?? "claim",
          quota: input.quota(v, "campaign.quota", c.quota),
          terms: input.voucherTerms(v, "campaign.voucher_terms", c.voucherTerms),
          startAt,
          endAt,
        };
      })!;
      const fingerprint = fingerprintRequest(CreateCampaignRequestSchema, req);
      const bookId = await campaigns.createBook(fields, caller.subject, req.requestId);
      return runIdempotent(db, {
        operation: "CreateCampaign",
        requestId: req.requestId,
        caller: caller.subject,
        fingerprint,
        responseSchema: CreateCampaignResponseSchema,
        run: async (trx) => create(CreateCampaignResponseSchema, { campaign: campaignOut(await campaigns.insert(trx, fields, bookId)) }),
      });
    },

    async getCampaign(req) {
      input.validated((v) => input.requiredId(v, "campaign_id", req.campaignId));
      return { campaign: campaignOut(await campaigns.get(req.campaignId)) };
    },

    async listCampaigns(req) {
      const limit = pageSize(req.pageSize);
      const filter = { state: CAMPAIGN_STATE_IN.get(req.state), type: CAMPAIGN_TYPE_IN.get(req.type) };
      const before = decodePageToken<string>(req.pageToken, filter);
      const p = page(await listCampaigns(db, filter, before, limit + 1), limit, filter, (c) => c.id);
      return { campaigns: p.items.map(campaignOut), nextPageToken: p.next };
    },

    async listActiveCampaigns(req, ctx) {
      const limit = pageSize(req.pageSize);
      const after = decodePageToken<ActivePosition>(req.pageToken, "active");
      const bytes = await cachedActivePage(`${limit}:${req.pageToken}`, async () => {
        const p = page(await listActiveCampaigns(db, after, limit + 1), limit, "active", activePosition);
        return toBinary(ListActiveCampaignsResponseSchema, create(ListActiveCampaignsResponseSchema, { campaigns: p.items.map(campaignOut), nextPageToken: p.next }));
      });
      // The same answer for everyone, a few seconds stale at most: let HTTP caches keep it (Connect GET).
      ctx.responseHeader.set("cache-control", `public, max-age=${Math.max(1, Math.floor(settings.activeCacheMs / 1000))}`);
      return fromBinary(ListActiveCampaignsResponseSchema, bytes);
    },

    async updateCampaign(req) {
      const paths = req.updateMask?.paths ?? [];
      const changes = input.validated((v) => {
        const c = req.campaign;
        if (!c) v.add("campaign", "REQUIRED", "is required");
        input.requiredId(v, "campaign.id", c?.id ?? "");
        if (!paths.length) v.add("update_mask", "REQUIRED", "name at least one field to update");
        const out: CampaignChanges = {};
        for (const path of paths) {
          switch (path) {
            case "name":
              out.name = input.name(v, "campaign.name", c?.name ?? "");
              break;
            case "description":
              out.description = input.description(v, "campaign.description", c?.description ?? "");
              break;
            case "quota":
              out.quota = input.quota(v, "campaign.quota", c?.quota ?? 0);
              break;
            case "start_time":
              out.startAt = input.date(c?.startTime);
              break;
            case "end_time":
              out.endAt = input.date(c?.endTime);
              break;
            case "voucher_terms":
              out.terms = input.voucherTerms(v, "campaign.voucher_terms", c?.voucherTerms);
              break;
            default:
              v.add("update_mask", "PATH_INVALID", `"${path}" cannot be updated (allowed: name, description, quota, start_time, end_time, voucher_terms)`);
          }
        }
        if (out.startAt !== undefined && out.endAt !== undefined) input.windowOf(v, "campaign", out.startAt, out.endAt);
        return out;
      });
      return { campaign: campaignOut(await campaigns.update(req.campaign!.id, changes)) };
    },

    async activateCampaign(req) {
      input.validated((v) => input.requiredId(v, "campaign_id", req.campaignId));
      return { campaign: campaignOut(await campaigns.activate(req.campaignId)) };
    },

    async pauseCampaign(req) {
      input.validated((v) => input.requiredId(v, "campaign_id", req.campaignId));
      return { campaign: campaignOut(await campaigns.pause(req.campaignId)) };
    },

    async endCampaign(req) {
      input.validated((v) => input.requiredId(v, "campaign_id", req.campaignId));
      return { campaign: campaignOut(await campaigns.end(req.campaignId)) };
    },

    // ── grants ──
    async claimCampaign(req, ctx) {
      const caller = requireCaller(ctx);
      input.validated((v) => {
        input.requiredId(v, "campaign_id", req.campaignId);
        input.requestId(v, req.requestId);
      });
      // The stored answer names the grant; it is read afresh, so a retry sees its voucher.
      const claimed = await runIdempotent(db, {
        operation: "ClaimCampaign",
        requestId: req.requestId,
        caller: caller.subject,
        fingerprint: fingerprintRequest(ClaimCampaignRequestSchema, req),
        responseSchema: ClaimCampaignResponseSchema,
        run: async (trx) => create(ClaimCampaignResponseSchema, { grant: { id: await grants.claim(trx, req.campaignId, caller.subject) } }),
      });
      const grant = await grants.issueSoon(claimed.grant!.id, Math.min(2_000, settings.voucherCallTimeoutMs));
      return { grant: (await grantsOut([grant!]))[0] };
    },

    async checkEligibility(req, ctx) {
      const caller = requireCaller(ctx);
      input.validated((v) => input.optionalId(v, "campaign_id", req.campaignId));
      const list = req.campaignId ? [await campaigns.get(req.campaignId, { hideDrafts: true })] : await listActiveCampaigns(db, undefined, 1000);
      const mine = await grantIdsOf(db, caller.subject, list.map((c) => c.id));
      const now = new Date();
      return {
        eligibilities: list.map((c) => {
          const reason = ineligibility(c, mine.has(c.id), now);
          return {
            campaign: campaignOut(c),
            eligible: reason === null,
            reason: reason ? INELIGIBILITY[reason] : IneligibilityReason.UNSPECIFIED,
            grantId: mine.get(c.id) ?? "",
          };
        }),
      };
    },

    async listMyPromotions(req, ctx) {
      const caller = requireCaller(ctx);
      const limit = pageSize(req.pageSize);
      const filter = { userId: caller.subject };
      const before = decodePageToken<string>(req.pageToken, filter);
      const p = page(await listGrants(db, filter, before, limit + 1), limit, filter, (g) => g.id);
      return { grants: await grantsOut(p.items), nextPageToken: p.next };
    },

    async getGrant(req, ctx) {
      const actor = actorOf(ctx);
      input.validated((v) => input.requiredId(v, "grant_id", req.grantId));
      const grant = await findGrant(db, req.grantId);
      if (!actor.admin && grant?.userId !== actor.subject) throw permissionDenied("NOT_OWNER", "not your grant");
      if (!grant) throw notFound("GRANT_NOT_FOUND", `grant ${req.grantId} does not exist`, { grantId: req.grantId });
      return { grant: (await grantsOut([grant]))[0] };
    },

    async listGrants(req) {
      const limit = pageSize(req.pageSize);
      input.validated((v) => {
        input.optionalId(v, "campaign_id", req.campaignId);
        input.optionalId(v, "user_id", req.userId);
      });
      const filter = { campaignId: req.campaignId || undefined, userId: req.userId || undefined, state: GRANT_STATE_IN.get(req.state) };
      const before = decodePageToken<string>(req.pageToken, filter);
      const p = page(await listGrants(db, filter, before, limit + 1), limit, filter, (g) => g.id);
      return { grants: await grantsOut(p.items), nextPageToken: p.next };
    },

    // ── top-ups ──
    async createTopUp(req, ctx) {
      const caller = requireCaller(ctx);
      const fields = input.validated((v) => {
        const phone = normalizePhone(req.phoneNumber);
        if (!phone) v.add("phone_number", "PHONE_NUMBER_INVALID", "must be a valid phone number in E.164 form, e.g. +84909123456");
        const amount = input.money(v, "amount", req.amount, "positive", true);
        if (amount && amount.currency !== settings.topUpCurrency) v.add("amount.currency_code", "CURRENCY_UNSUPPORTED", `top-ups are in ${settings.topUpCurrency}`);
        else if (amount && (amount.minor < settings.topUpMinMinor || amount.minor > settings.topUpMaxMinor)) {
          v.add("amount.minor_units", "AMOUNT_OUT_OF_RANGE", `must be ${settings.topUpMinMinor} to ${settings.topUpMaxMinor} ${settings.topUpCurrency} minor units`);
        }
        const code = req.voucherCode.trim().toUpperCase();
        if (code.length > 64 || (code && !/^[\x21-\x7e]+$/.test(code))) v.add("voucher_code", "CODE_MALFORMED", "must be at most 64 printable characters");
        input.requestId(v, req.requestId, true);
        return { phone: phone ?? "", amount: amount!, code };
      });
      const fingerprint = fingerprintRequest(CreateTopUpRequestSchema, { ...req, phoneNumber: fields.phone, voucherCode: fields.code });
      const order = await topUps.create(caller.subject, { phoneNumber: fields.phone, amount: fields.amount, voucherCode: fields.code, requestId: req.requestId, fingerprint });
      return { topUp: topUpOut(order) };
    },

    async getTopUp(req, ctx) {
      input.validated((v) => input.requiredId(v, "top_up_id", req.topUpId));
      return { topUp: topUpOut(await topUps.get(actorOf(ctx), req.topUpId)) };
    },

    async listMyTopUps(req, ctx) {
      const caller = requireCaller(ctx);
      const limit = pageSize(req.pageSize);
      const filter = { userId: caller.subject, state: TOP_UP_STATE_IN.get(req.state) };
      const before = decodePageToken<string>(req.pageToken, filter);
      const p = page(await listTopUps(db, filter, before, limit + 1), limit, filter, (t) => t.id);
      return { topUps: p.items.map(topUpOut), nextPageToken: p.next };
    },

    async listTopUps(req) {
      const limit = pageSize(req.pageSize);
      const phone = req.phoneNumber ? normalizePhone(req.phoneNumber) : undefined;
      input.validated((v) => {
        input.optionalId(v, "user_id", req.userId);
        if (req.phoneNumber && !phone) v.add("phone_number", "PHONE_NUMBER_INVALID", "must be a valid phone number in E.164 form");
        if (req.transferReference.length > 64) v.add("transfer_reference", "REFERENCE_INVALID", "must be at most 64 characters");
      });
      const filter = {
        userId: req.userId || undefined,
        state: TOP_UP_STATE_IN.get(req.state),
        phoneNumber: phone,
        reference: req.transferReference ? req.transferReference.toUpperCase().replace(/[\s-]+/g, "") : undefined,
      };
      const before = decodePageToken<string>(req.pageToken, filter);
      const p = page(await listTopUps(db, filter, before, limit + 1), limit, filter, (t) => t.id);
      return { topUps: p.items.map(topUpOut), nextPageToken: p.next };
    },

    async confirmTransfer(req) {
      const fields = input.validated((v) => {
        if (!req.transferReference.trim()) v.add("transfer_reference", "REQUIRED", "is required");
        else if (req.transferReference.length > 64) v.add("transfer_reference", "REFERENCE_INVALID", "must be at most 64 characters");
        const amount = input.money(v, "amount_paid", req.amountPaid, "nonNegative", true);
        input.requestId(v, req.requestId, true);
        return { amount: amount! };
      });
      const order = await topUps.confirm({
        reference: req.transferReference,
        amountPaid: fields.amount,
        requestId: req.requestId,
        fingerprint: confirmationFingerprint(req.transferReference, fields.amount),
      });
      return { topUp: topUpOut(order) };
    },

    async cancelTopUp(req, ctx) {
      input.validated((v) => input.requiredId(v, "top_up_id", req.topUpId));
      return { topUp: topUpOut(await topUps.cancel(actorOf(ctx), req.topUpId)) };
    },
  };

  return (router) => router.service(PromotionService, impl);
}

/** Bumps the public list's cache generation: every cached page is stale at once. */
export async function invalidateActiveCache(redis: Redis): Promise<void> {
  await redis.incr(ACTIVE_CACHE_GENERATION).catch(() => {});
}
