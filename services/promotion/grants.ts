// Grants: who got which campaign's voucher. A slot is taken and the grant recorded in one
// transaction with its `voucher_granted` event (outbox); the voucher is then issued by the
// voucher service, idempotent by grant id, from the event (retried until it succeeds),
// inline after a claim (so the caller usually sees it at once), and by the sweep's
// reconciliation for any grant still without voucher. All three may run for the same
// grant, on any replicas: IssueVoucher returns the same voucher every time and
// `markIssued` records it once.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Kysely, Transaction } from "kysely";
import { VoucherGrantedSchema, type UserLoggedIn, type VoucherGranted } from "../../gen/vouch/events/v1/events_pb.js";
import { alreadyExists, Code, failedPrecondition, notFound, VouchError } from "../kit/errors.js";
import { enqueueEvent, retryLater, type EventMeta } from "../kit/events/index.js";
import { newId } from "../kit/ids.js";
import type { Logger } from "../kit/log.js";
import { isOver, type Grant } from "./domain/model.js";
import { findCampaign, takeClaimSlot, takeFirstLoginSlots, type Slot } from "./store/campaigns.js";
import { findGrant, findGrantOf, insertGrant, markIssued, pendingGrants, recordIssueFailure, underGrantSavepoint } from "./store/grants.js";
import type { PromotionDB } from "./store/schema.js";
import { voucherReason, voucherUnreachable, type VoucherGateway } from "./voucher-client.js";

export const SUBJECTS = {
  userLoggedIn: "auth.user_logged_in",
  voucherGranted: "promotion.voucher_granted",
  topUpCompleted: "promotion.top_up_completed",
} as const;

export interface GrantsDeps {
  db: Kysely<PromotionDB>;
  voucher: VoucherGateway;
  log: Logger;
  /** Counts grants made, by campaign type (metrics). */
  onGranted?: (type: "first_login" | "claim", n: number) => void;
}

/** Records the grant of one slot and its event, in the slot's transaction. */
async function recordGrant(trx: Transaction<PromotionDB>, slot: Slot, userId: string): Promise<string> {
  const id = newId();
  const createdAt = await insertGrant(trx, { id, campaignId: slot.campaignId, userId });
  await enqueueEvent(trx, {
    subject: SUBJECTS.voucherGranted,
    schema: VoucherGrantedSchema,
    message: { grantId: id, campaignId: slot.campaignId, userId, bookId: slot.bookId, grantTime: timestampFromDate(createdAt) },
  });
  return id;
}

export class Grants {
  constructor(private readonly deps: GrantsDeps) {}

  /**
   * The `user_logged_in` consumer's effect (inside its inbox transaction, so a redelivered
   * event is skipped before it gets here). Only first logins count. A login that finds every
   * campaign full (or none running) changes nothing and is not an error.
   */
  async grantFirstLogin(trx: Transaction<PromotionDB>, event: UserLoggedIn, _meta?: EventMeta): Promise<string[]> {
    if (!event.firstLogin || !event.userId) return [];
    const loginAt = event.loginTime ? new Date(Number(event.loginTime.seconds) * 1000 + Math.floor(event.loginTime.nanos / 1e6)) : new Date();
    // A lost race on the (campaign, user) index (the same login replayed under another
    // event id, concurrently) undoes this attempt's slots; the next attempt's NOT EXISTS
    // then sees the winner's grant and takes nothing there.
    for (let attempt = 1; attempt <= 3; attempt++) {
      const granted = await underGrantSavepoint(trx, async () => {
        const slots = await takeFirstLoginSlots(trx, event.userId, loginAt);
        const ids: string[] = [];
        for (const slot of slots) ids.push(await recordGrant(trx, slot, event.userId));
        return ids;
      });
      if (granted) {
        if (granted.length) this.deps.onGranted?.("first_login", granted.length);
        return granted;
      }
    }
    // Not the event's fault: redeliver it shortly rather than count a failure toward parking.
    throw retryLater(200, `first login of ${event.userId} kept racing a duplicate; retrying the event`);
  }

  /**
   * Takes a slot of a CLAIM campaign for the user, inside the caller's (idempotent)
   * transaction. Throws the reason when no slot can be taken.
   */
  async claim(trx: Transaction<PromotionDB>, campaignId: string, userId: string): Promise<string> {
    const id = await underGrantSavepoint(trx, async () => {
      const existing = await findGrantOf(trx, campaignId, userId);
      if (existing) throw alreadyParticipated(existing.id);
      const slot = await takeClaimSlot(trx, campaignId);
      if (!slot) throw await this.whyNoSlot(trx, campaignId, userId);
      return recordGrant(trx, slot, userId);
    });
    if (id) {
      this.deps.onGranted?.("claim", 1);
      return id;
    }
    // A concurrent claim of the same user won the unique index.
    const winner = await findGrantOf(this.deps.db, campaignId, userId);
    throw alreadyParticipated(winner?.id ?? "");
  }

  private async whyNoSlot(trx: Transaction<PromotionDB>, campaignId: string, userId: string): Promise<VouchError> {
    const c = await findCampaign(trx, campaignId);
    const now = new Date();
    if (!c || c.state === "draft") return notFound("CAMPAIGN_NOT_FOUND", `campaign ${campaignId} does not exist`, { campaignId });
    const mine = await findGrantOf(trx, campaignId, userId);
    if (mine) return alreadyParticipated(mine.id);
    if (c.type !== "claim") return failedPrecondition("CAMPAIGN_NOT_CLAIMABLE", "first-login campaigns grant by themselves; they cannot be claimed");
    if (isOver(c, now)) return failedPrecondition("CAMPAIGN_ENDED", "the campaign has ended");
    if (c.state !== "active") return failedPrecondition("CAMPAIGN_NOT_ACTIVE", "the campaign is paused");
    if (c.startAt && c.startAt > now) return failedPrecondition("CAMPAIGN_NOT_STARTED", "the campaign has not started yet", { startTime: c.startAt.toISOString() });
    if (c.granted >= c.quota) return failedPrecondition("CAMPAIGN_FULL", "every slot of the campaign is taken");
    // The campaign changed between the refused update and this read: retry the transaction.
    return new VouchError(Code.Aborted, "TRANSACTION_ABORTED", "the campaign changed while claiming; retry");
  }

  /**
   * Issues a grant's voucher and records it. Idempotent: the voucher service returns the
   * same voucher for the same grant id, and the grant is marked once.
   */
  async issue(db: Kysely<PromotionDB> | Transaction<PromotionDB>, grant: { grantId: string; bookId: string; userId: string }, timeoutMs?: number): Promise<string> {
    const issued = await this.deps.voucher.issue(grant.grantId, grant.bookId, grant.userId, timeoutMs);
    await markIssued(db, grant.grantId, issued.voucherId);
    return issued.voucherId;
  }

  /**
   * The `voucher_granted` consumer's effect. A voucher service that is down, or a book
   * without free codes yet (its generation job still running) or not active yet, is an
   * outage from the grant's point of view: reported as transient so the kit redelivers it
   * for a long time, and the reconciliation catches whatever outlives that.
   */
  async issueGranted(trx: Transaction<PromotionDB>, event: VoucherGranted): Promise<void> {
    try {
      await this.issue(trx, { grantId: event.grantId, bookId: event.bookId, userId: event.userId });
    } catch (err) {
      const reason = voucherReason(err);
      await recordIssueFailure(this.deps.db, event.grantId, reason ?? String((err as Error).message ?? err)).catch(() => {});
      if (voucherUnreachable(err) || reason === "BOOK_SOLD_OUT" || reason === "BOOK_NOT_ACTIVE") {
        throw new VouchError(Code.Unavailable, "VOUCHER_NOT_ISSUED_YET", `voucher of grant ${event.grantId} not issued yet: ${reason ?? "voucher service unreachable"}`, { cause: err });
      }
      throw err;
    }
  }

  /** Issues the vouchers of grants that have been waiting longer than `olderThanMs`. */
  async reconcile(olderThanMs: number, limit = 200): Promise<number> {
    const pending = await pendingGrants(this.deps.db, olderThanMs, limit);
    let issued = 0;
    for (const g of pending) {
      try {
        await this.issue(this.deps.db, { grantId: g.id, bookId: g.bookId, userId: g.userId });
        issued++;
      } catch (err) {
        await recordIssueFailure(this.deps.db, g.id, voucherReason(err) ?? String((err as Error).message ?? err)).catch(() => {});
        this.deps.log.warn({ err, grantId: g.id }, "reconciliation could not issue a grant's voucher yet");
        if (voucherUnreachable(err)) break; // the voucher service is down: the next sweep tries again
      }
    }
    if (issued) this.deps.log.info({ issued }, "reconciliation issued vouchers of waiting grants");
    return issued;
  }

  /** After a claim commits: try to issue at once so the answer usually carries the voucher. */
  async issueSoon(grantId: string, timeoutMs: number): Promise<Grant | undefined> {
    const grant = await findGrant(this.deps.db, grantId);
    if (!grant || grant.state === "issued") return grant;
    const c = await findCampaign(this.deps.db, grant.campaignId);
    if (!c) return grant;
    try {
      await this.issue(this.deps.db, { grantId, bookId: c.bookId, userId: grant.userId }, timeoutMs);
    } catch (err) {
      this.deps.log.debug({ err, grantId }, "voucher not issued inline; the event and the reconciliation will");
    }
    return findGrant(this.deps.db, grantId);
  }
}

const alreadyParticipated = (grantId: string) => alreadyExists("ALREADY_PARTICIPATED", "you already got this campaign's voucher", { grantId });
