// Campaign administration. Each campaign is backed by a voucher book it creates in the
// voucher service (one code per slot, single use, one per user), so a grant's voucher
// always comes from a book sized for the campaign. Remote steps come first and are
// idempotent (derived request ids), local ones are conditional updates, so a retry after
// any failure converges on the same campaign and the same book.
import { createHash } from "node:crypto";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Kysely, Transaction } from "kysely";
import { failedPrecondition, invalidArgument, notFound, VouchError, Code } from "../kit/errors.js";
import { newId } from "../kit/ids.js";
import type { Logger } from "../kit/log.js";
import { isOver, type Campaign, type CampaignState, type CampaignType, type VoucherTerms } from "./domain/model.js";
import * as store from "./store/campaigns.js";
import type { PromotionDB } from "./store/schema.js";
import { discountOut, moneyOut, unavailableFromVoucher, voucherReason, type VoucherGateway } from "./voucher-client.js";

export interface CampaignsDeps {
  db: Kysely<PromotionDB>;
  voucher: VoucherGateway;
  defaultCodePattern: string;
  log: Logger;
  /** Called after any change, so cached public lists can be dropped. */
  onChange?: () => void;
}

export interface NewCampaignInput {
  name: string;
  description: string;
  type: CampaignType;
  quota: number;
  terms: VoucherTerms;
  startAt: Date | null;
  endAt: Date | null;
}

const DAY_MS = 86_400_000;

/** What the voucher service refused a book for → VOUCHER_BOOK_REJECTED (its reason kept). */
function bookRejected(err: unknown): never {
  const reason = voucherReason(err);
  if (reason && reason !== "REQUEST_ID_REUSED") {
    throw new VouchError(Code.FailedPrecondition, "VOUCHER_BOOK_REJECTED", `the voucher service refused the campaign's book: ${(err as Error).message}`, {
      metadata: { voucherReason: reason },
      cause: err,
    });
  }
  unavailableFromVoucher(err);
}

export class Campaigns {
  constructor(private readonly deps: CampaignsDeps) {}

  private bookFields(name: string, terms: VoucherTerms) {
    return {
      name: name.slice(0, 200),
      description: "Vouchers of a promotion campaign",
      discount: discountOut(terms.discount),
      minimumOrderAmount: moneyOut(terms.minimum),
      codeValidity: durationFromMs(terms.validityDays * DAY_MS),
      codePattern: terms.codePattern || this.deps.defaultCodePattern,
      usesPerCode: 1,
      maxCodesPerUser: 1,
    };
  }

  /**
   * Creates (or, on a retry of the same request, finds) the campaign's book. The book's
   * request id is derived from the campaign's, so a retried CreateCampaign never makes a
   * second book; without a request id every call is a new campaign.
   */
  async createBook(input: NewCampaignInput, caller: string, requestId: string): Promise<string> {
    const bookRequestId = requestId ? `campaign-${createHash("sha256").update(`${caller}\n${requestId}`).digest("base64url").slice(0, 40)}` : newId();
    try {
      return await this.deps.voucher.createBook(this.bookFields(input.name, input.terms), input.quota, bookRequestId);
    } catch (err) {
      if (voucherReason(err) === "REQUEST_ID_REUSED") {
        throw new VouchError(Code.AlreadyExists, "REQUEST_ID_REUSED", `request_id ${requestId} was already used with a different request`, { metadata: { requestId } });
      }
      bookRejected(err);
    }
  }

  async insert(trx: Transaction<PromotionDB>, input: NewCampaignInput, bookId: string): Promise<Campaign> {
    const campaign = await store.insertCampaign(trx, {
      id: newId(),
      ...input,
      terms: { ...input.terms, codePattern: input.terms.codePattern || this.deps.defaultCodePattern },
      bookId,
    });
    this.deps.onChange?.();
    return campaign;
  }

  async get(id: string, opts: { hideDrafts?: boolean } = {}): Promise<Campaign> {
    const c = await store.findCampaign(this.deps.db, id);
    if (!c || (opts.hideDrafts && c.state === "draft")) throw notFound("CAMPAIGN_NOT_FOUND", `campaign ${id} does not exist`, { campaignId: id });
    return c;
  }

  async activate(id: string): Promise<Campaign> {
    const c = await this.get(id);
    if (c.state === "ended") throw transitionRefused(c.state);
    if (c.state === "active") return c;
    if (isOver(c, new Date())) throw failedPrecondition("CAMPAIGN_ENDED", "the campaign is past its end time");
    // The book first: a campaign is never active with a book that cannot issue.
    try {
      await this.deps.voucher.activateBook(c.bookId);
    } catch (err) {
      bookRejected(err);
    }
    const { moved, campaign } = await store.moveCampaign(this.deps.db, id, ["draft", "paused"], "active", { notPastEnd: true });
    if (moved) {
      this.deps.onChange?.();
      return campaign!;
    }
    if (campaign?.state === "active") return campaign;
    if (campaign?.state === "ended") throw transitionRefused("ended");
    throw failedPrecondition("CAMPAIGN_ENDED", "the campaign is past its end time");
  }

  async pause(id: string): Promise<Campaign> {
    const { moved, campaign } = await store.moveCampaign(this.deps.db, id, ["active"], "paused");
    if (!campaign) throw notFound("CAMPAIGN_NOT_FOUND", `campaign ${id} does not exist`, { campaignId: id });
    if (moved) this.deps.onChange?.();
    if (moved || campaign.state === "paused") return campaign;
    throw transitionRefused(campaign.state);
  }

  async end(id: string): Promise<Campaign> {
    const { moved, campaign } = await store.moveCampaign(this.deps.db, id, ["draft", "active", "paused"], "ended");
    if (!campaign) throw notFound("CAMPAIGN_NOT_FOUND", `campaign ${id} does not exist`, { campaignId: id });
    if (moved) this.deps.onChange?.();
    return campaign;
  }

  /**
   * Applies an update. A raised quota first adds the missing codes to the book (idempotent
   * per campaign and quota); new voucher terms (DRAFT only) first go to the book.
   */
  async update(id: string, changes: store.CampaignChanges): Promise<Campaign> {
    const current = await this.get(id);
    if (current.state === "ended") throw transitionRefused("ended", "an ended campaign cannot be changed");
    if (changes.terms && current.state !== "draft") {
      throw failedPrecondition("CAMPAIGN_FIELD_IMMUTABLE", "voucher_terms cannot change once the campaign left DRAFT", { field: "voucher_terms" });
    }
    if (changes.quota !== undefined && changes.quota < current.granted) {
      throw failedPrecondition("QUOTA_BELOW_GRANTED", `${current.granted} users already got the voucher`, { grantedCount: String(current.granted) });
    }
    const startAt = changes.startAt !== undefined ? changes.startAt : current.startAt;
    const endAt = changes.endAt !== undefined ? changes.endAt : current.endAt;
    if (startAt && endAt && endAt <= startAt) {
      throw invalidArgument([{ field: "campaign.end_time", reason: "WINDOW_INVALID", description: "must be after start_time" }]);
    }
    try {
      if (changes.quota !== undefined && changes.quota > current.quota) {
        await this.deps.voucher.generateCodes(current.bookId, changes.quota - current.quota, `quota-${id}-${changes.quota}`);
      }
      if (changes.terms) {
        const fields = this.bookFields(changes.name ?? current.name, changes.terms);
        await this.deps.voucher.updateBook(
          { id: current.bookId, ...fields },
          ["discount", "minimum_order_amount", "code_validity", "code_pattern"],
        );
      }
    } catch (err) {
      bookRejected(err);
    }
    for (let attempt = 1; ; attempt++) {
      try {
        const outcome = await store.updateCampaign(this.deps.db, id, changes);
        switch (outcome.kind) {
          case "updated":
            this.deps.onChange?.();
            return outcome.campaign;
          case "missing":
            throw notFound("CAMPAIGN_NOT_FOUND", `campaign ${id} does not exist`, { campaignId: id });
          case "ended":
            throw transitionRefused("ended", "an ended campaign cannot be changed");
          case "not_draft":
            throw failedPrecondition("CAMPAIGN_FIELD_IMMUTABLE", "voucher_terms cannot change once the campaign left DRAFT", { field: "voucher_terms" });
          case "quota_below_granted":
            throw failedPrecondition("QUOTA_BELOW_GRANTED", `${outcome.granted} users already got the voucher`, { grantedCount: String(outcome.granted) });
          case "window_invalid":
            throw invalidArgument([{ field: "campaign.end_time", reason: "WINDOW_INVALID", description: "must be after start_time" }]);
        }
      } catch (err) {
        if ((err as { code?: string }).code === "40001" && attempt < 3) continue;
        throw err;
      }
    }
  }

  async endOverdue(): Promise<number> {
    const n = await store.endOverdueCampaigns(this.deps.db);
    if (n) this.deps.onChange?.();
    return n;
  }
}

function transitionRefused(state: CampaignState, message = `the campaign is ${state.toUpperCase()}`) {
  return failedPrecondition("INVALID_CAMPAIGN_STATE_TRANSITION", message, { state: `CAMPAIGN_STATE_${state.toUpperCase()}` });
}
