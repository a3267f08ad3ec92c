// Phone top-ups paid by bank transfer: a saga over two services that never spends a
// voucher twice.
//
//   CreateTopUp      validate the voucher, reserve it (a lease outliving the order's
//                    deadline), record the order AWAITING_TRANSFER with a unique reference
//   ConfirmTransfer  (or the bank webhook) AWAITING_TRANSFER → PROCESSING, one conditional
//                    update that also stops the deadline sweep and cancels; then redeem the
//                    voucher (idempotent by order), credit the phone (idempotent by order),
//                    and COMPLETED with its event — or FAILED, the redemption rolled back
//                    or, when the voucher was refused, the reservation released
//   deadline / cancel AWAITING_TRANSFER → EXPIRED / CANCELLED, then release the reservation
//
// Each remote step is idempotent and the order records how far it got, so a crash or an
// unreachable voucher service leaves the order where a retry (the caller's, with the same
// request id, or the sweep's) picks it up. The reservation is what keeps a voucher on one
// order: a second order cannot reserve it until it is released, and it is released only
// once the order can no longer be paid.
import { createHash, randomBytes } from "node:crypto";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Kysely } from "kysely";
import { TopUpCompletedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { alreadyExists, Code, failedPrecondition, notFound, permissionDenied, VouchError } from "../kit/errors.js";
import { enqueueEvent } from "../kit/events/index.js";
import { newId } from "../kit/ids.js";
import type { Logger } from "../kit/log.js";
import { discountFor, newTransferReference, normaliseReference, type Money, type TopUp } from "./domain/model.js";
import { SUBJECTS } from "./grants.js";
import type { TopUpOperator } from "./operator.js";
import type { PromotionSettings } from "./settings.js";
import type { PromotionDB } from "./store/schema.js";
import * as store from "./store/topups.js";
import { discountIn, moneyIn, unavailableFromVoucher, voucherReason, voucherUnreachable, type VoucherGateway } from "./voucher-client.js";

export interface Actor {
  subject: string;
  admin: boolean;
}

export interface TopUpsDeps {
  db: Kysely<PromotionDB>;
  voucher: VoucherGateway;
  operator: TopUpOperator;
  settings: PromotionSettings;
  log: Logger;
  onFinished?: (state: string) => void;
}

/** Voucher refusals (ErrorInfo reasons of Reserve/Redeem) → the names of `InvalidVoucherReason`. */
const VOUCHER_REASON: Record<string, string> = {
  VOUCHER_NOT_FOUND: "UNKNOWN_CODE",
  NOT_OWNER: "NOT_OWNER",
  BOOK_NOT_ACTIVE: "BOOK_NOT_ACTIVE",
  VOUCHER_NOT_STARTED: "NOT_STARTED",
  VOUCHER_EXPIRED: "EXPIRED",
  VOUCHER_ALREADY_REDEEMED: "ALREADY_REDEEMED",
  VOUCHER_RESERVED: "RESERVED_BY_OTHER",
  REDEMPTIONS_PER_USER_LIMIT_REACHED: "USER_LIMIT_REACHED",
  CURRENCY_MISMATCH: "CURRENCY_MISMATCH",
  MINIMUM_ORDER_NOT_MET: "MINIMUM_NOT_MET",
};

const notApplicable = (voucherReasonName: string) =>
  failedPrecondition("VOUCHER_NOT_APPLICABLE", `the voucher cannot pay for this order (${voucherReasonName})`, { voucherReason: voucherReasonName });

/** A key for the voucher service derived from ours (its request ids are scoped to us, the caller, and ≤ 64 chars). */
const derivedKey = (prefix: string, ...parts: string[]) => `${prefix}-${createHash("sha256").update(parts.join("\n")).digest("base64url").slice(0, 40)}`;

const sameMoney = (a: Money, b: Money) => a.minor === b.minor && a.currency === b.currency;

export interface CreateTopUpInput {
  phoneNumber: string;
  amount: Money;
  voucherCode: string;
  requestId: string;
  fingerprint: string;
}

export class TopUps {
  constructor(private readonly deps: TopUpsDeps) {}

  async create(userId: string, input: CreateTopUpInput): Promise<TopUp> {
    const { db, voucher, settings } = this.deps;
    const prior = await store.findByRequest(db, userId, input.requestId);
    if (prior) return this.replayCreate(prior, input);

    let reservation: { token: string; voucherId: string; discount: Money } | undefined;
    if (input.voucherCode) {
      let validation;
      try {
        validation = await voucher.validate(input.voucherCode, userId, input.amount);
      } catch (err) {
        unavailableFromVoucher(err);
      }
      if (!validation.valid) throw notApplicable(validation.reason);
      const discount = discountFor(discountIn(validation.voucher.discount)!, moneyIn(validation.voucher.minimumOrderAmount), input.amount);
      if (!discount) throw notApplicable("MINIMUM_NOT_MET");
      try {
        // The lease outlives the order's deadline, so it never lapses while the order can still be paid.
        const r = await voucher.reserve(
          input.voucherCode,
          userId,
          input.amount,
          settings.transferDeadlineMs + settings.reservationMarginMs,
          derivedKey("topup", userId, input.requestId),
        );
        if (r.discount && !sameMoney(r.discount, discount)) {
          // The voucher service records the redemption's discount: charge what it will grant.
          this.deps.log.warn({ ours: String(discount.minor), voucher: String(r.discount.minor) }, "discount differs from the voucher service's; using the voucher service's");
        }
        reservation = { token: r.token, voucherId: r.voucherId, discount: r.discount ?? discount };
      } catch (err) {
        const reason = voucherReason(err);
        if (reason === "REQUEST_ID_REUSED") throw alreadyExists("REQUEST_ID_REUSED", `request_id ${input.requestId} was already used with a different request`);
        if (reason && VOUCHER_REASON[reason]) throw notApplicable(VOUCHER_REASON[reason]);
        unavailableFromVoucher(err);
      }
    }

    const discount = reservation?.discount ?? null;
    const pay: Money = { minor: input.amount.minor - (discount?.minor ?? 0n), currency: input.amount.currency };
    for (let attempt = 1; ; attempt++) {
      const outcome = await store.insertTopUp(db, {
        id: newId(),
        userId,
        requestId: input.requestId,
        fingerprint: input.fingerprint,
        phoneNumber: input.phoneNumber,
        amount: input.amount,
        voucherCode: input.voucherCode || null,
        voucherId: reservation?.voucherId ?? null,
        reservationToken: reservation?.token ?? null,
        discount,
        pay,
        reference: newTransferReference(randomBytes),
        deadlineAt: new Date(Date.now() + settings.transferDeadlineMs),
        state: "awaiting_transfer",
      });
      if (outcome.kind === "reference_taken" && attempt < 5) continue;
      if (outcome.kind === "reference_taken") throw new Error("could not draw a free transfer reference in 5 attempts");
      if (outcome.kind === "request_taken") {
        // A concurrent retry of the same request recorded it first (with the same reservation).
        return this.replayCreate((await store.findByRequest(db, userId, input.requestId))!, input);
      }
      const order = outcome.topUp;
      this.deps.log.info({ topUpId: order.id, reference: order.reference, withVoucher: Boolean(reservation) }, "top-up order created");
      // Nothing to transfer: the voucher pays it all, the order proceeds at once.
      if (pay.minor === 0n) return this.confirmOrder(order, { minor: 0n, currency: pay.currency }, `auto-${order.id}`, "auto");
      return order;
    }
  }

  private async replayCreate(prior: TopUp & { fingerprint: string }, input: CreateTopUpInput): Promise<TopUp> {
    if (prior.fingerprint !== input.fingerprint) {
      throw alreadyExists("REQUEST_ID_REUSED", `request_id ${input.requestId} was already used with a different request`, { requestId: input.requestId });
    }
    return prior.state === "processing" ? this.process(prior) : prior;
  }

  /** Records a bank transfer for the order with this reference (admin rpc or verified webhook). */
  async confirm(input: { reference: string; amountPaid: Money; requestId: string; fingerprint: string }): Promise<TopUp> {
    const { db } = this.deps;
    const prior = await store.findByConfirmation(db, input.requestId);
    if (prior) {
      if (prior.confirmFingerprint !== input.fingerprint) {
        throw alreadyExists("REQUEST_ID_REUSED", `request_id ${input.requestId} already confirmed another transfer`, { requestId: input.requestId });
      }
      return prior.state === "processing" ? this.process(prior) : prior;
    }
    const order = await store.findByReference(db, normaliseReference(input.reference));
    if (!order) throw notFound("TOP_UP_NOT_FOUND", "no top-up order has this transfer reference", { transferReference: input.reference });
    return this.confirmOrder(order, input.amountPaid, input.requestId, input.fingerprint);
  }

  private async confirmOrder(order: TopUp, amountPaid: Money, requestId: string, fingerprint: string): Promise<TopUp> {
    const { db } = this.deps;
    if (!sameMoney(amountPaid, order.pay)) {
      throw failedPrecondition("TRANSFER_AMOUNT_MISMATCH", `the order's amount to pay is ${order.pay.minor} ${order.pay.currency}`, {
        expectedMinorUnits: order.pay.minor.toString(),
        currencyCode: order.pay.currency,
      });
    }
    let paid: TopUp | undefined;
    try {
      paid = await store.markPaid(db, order.id, requestId, fingerprint);
    } catch (err) {
      if ((err as { constraint?: string }).constraint === "top_ups_confirm_request") {
        throw alreadyExists("REQUEST_ID_REUSED", `request_id ${requestId} already confirmed another transfer`, { requestId });
      }
      throw err;
    }
    if (paid) {
      this.deps.log.info({ topUpId: order.id, requestId }, "transfer confirmed");
      return this.process(paid);
    }
    // Another confirmation, a cancel or the deadline got there first.
    const now = (await store.findTopUp(db, order.id))!;
    if (now.confirmRequestId === requestId) return now.state === "processing" ? this.process(now) : now;
    switch (now.state) {
      case "processing":
      case "completed":
      case "failed":
        throw failedPrecondition("TOP_UP_ALREADY_PAID", "the transfer for this order was already confirmed");
      case "cancelled":
        throw failedPrecondition("TOP_UP_CANCELLED", "the order was cancelled");
      default:
        // Expired, or past its deadline and not yet swept: expire it now so its voucher comes back.
        await this.expire([now.id]);
        throw failedPrecondition("TOP_UP_EXPIRED", "the order passed its deadline; its voucher was released");
    }
  }

  /**
   * Takes a PROCESSING order to its end: redeem the voucher, credit the phone, COMPLETED
   * (with its event), or FAILED with the redemption rolled back. Safe to run again, from any
   * replica, at any point: each step is idempotent by the order id.
   */
  async process(order: TopUp): Promise<TopUp> {
    const { db, voucher, operator } = this.deps;
    let redemptionId = order.redemptionId;
    if (order.voucherCode && !redemptionId) {
      try {
        const r = await voucher.redeem({
          code: order.voucherCode,
          userId: order.userId,
          orderReference: order.id,
          amount: order.amount,
          reservationToken: order.reservationToken!,
          requestId: derivedKey("redeem", order.id),
        });
        redemptionId = r.redemptionId;
        await store.recordRedemption(db, order.id, redemptionId);
      } catch (err) {
        if (voucherUnreachable(err)) unavailableFromVoucher(err);
        // The voucher was refused after payment (it expired meanwhile, the book was paused):
        // nothing was redeemed and the phone is not topped up; the payment is refunded, and
        // finish releases the reservation so the voucher is not locked until its lease lapses.
        const reason = voucherReason(err) ?? "UNKNOWN";
        this.deps.log.error({ err, topUpId: order.id, reason }, "voucher refused at redemption after payment");
        return this.finish(order, "failed", { failureMessage: `the voucher could not be redeemed (${reason}); the payment will be refunded` });
      }
    }
    let result;
    try {
      result = await operator.topUp({ orderId: order.id, phoneNumber: order.phoneNumber, amount: order.amount });
    } catch (err) {
      this.deps.log.warn({ err, topUpId: order.id }, "operator unreachable; the order stays PROCESSING and is retried");
      throw failedToReachOperator(err);
    }
    if (result.kind === "refused") {
      if (redemptionId) {
        try {
          await voucher.rollback(redemptionId, `top-up ${order.id} refused by the operator`, derivedKey("rollback", order.id));
        } catch (err) {
          unavailableFromVoucher(err);
        }
      }
      return this.finish(order, "failed", { failureMessage: `${result.message}; the voucher was given back and the payment will be refunded` });
    }
    return this.finish({ ...order, redemptionId }, "completed", { operatorReference: result.reference });
  }

  private async finish(order: TopUp, to: "completed" | "failed", fields: { operatorReference?: string; failureMessage?: string }): Promise<TopUp> {
    const done = await this.deps.db.transaction().execute(async (trx) => {
      const finished = await store.finishProcessing(trx, order.id, to, fields);
      if (finished && to === "completed") {
        await enqueueEvent(trx, {
          subject: SUBJECTS.topUpCompleted,
          schema: TopUpCompletedSchema,
          message: {
            topUpId: finished.id,
            userId: finished.userId,
            phoneNumber: finished.phoneNumber,
            amount: { minorUnits: finished.amount.minor, currencyCode: finished.amount.currency },
            amountPaid: { minorUnits: finished.pay.minor, currencyCode: finished.pay.currency },
            discountAmount: finished.discount ? { minorUnits: finished.discount.minor, currencyCode: finished.discount.currency } : undefined,
            voucherCode: finished.voucherCode ?? "",
            redemptionId: finished.redemptionId ?? "",
            operatorReference: finished.operatorReference ?? "",
            completeTime: timestampFromDate(finished.finishedAt ?? new Date()),
          },
        });
      }
      return finished;
    });
    if (done) {
      this.deps.onFinished?.(to);
      this.deps.log.info({ topUpId: order.id, state: to }, "top-up order finished");
      if (done.releasePending) await this.release(done);
      return done;
    }
    return (await store.findTopUp(this.deps.db, order.id))!; // another replica finished it (and releases)
  }

  async cancel(actor: Actor, id: string): Promise<TopUp> {
    const order = await this.get(actor, id);
    const cancelled = await store.cancel(this.deps.db, id);
    if (cancelled) {
      await this.release(cancelled);
      return (await store.findTopUp(this.deps.db, id))!;
    }
    const now = (await store.findTopUp(this.deps.db, order.id))!;
    switch (now.state) {
      case "cancelled":
        return now;
      case "processing":
      case "completed":
      case "failed":
        throw failedPrecondition("TOP_UP_ALREADY_PAID", "the order is paid; it cannot be cancelled");
      default:
        await this.expire([id]);
        throw failedPrecondition("TOP_UP_EXPIRED", "the order passed its deadline; its voucher was released");
    }
  }

  /** A customer sees only their own orders (NOT_OWNER whether or not the id exists); admins get NOT_FOUND. */
  async get(actor: Actor, id: string): Promise<TopUp> {
    const order = await store.findTopUp(this.deps.db, id);
    if (!actor.admin && order?.userId !== actor.subject) throw permissionDenied("NOT_OWNER", "not your top-up order");
    if (!order) throw notFound("TOP_UP_NOT_FOUND", `top-up order ${id} does not exist`, { topUpId: id });
    return order;
  }

  /** Expires overdue orders (all, or these) and releases their vouchers. */
  async expire(ids?: string[]): Promise<number> {
    const expired = await store.expireOverdue(this.deps.db, ids);
    for (const order of expired) {
      this.deps.onFinished?.("expired");
      this.deps.log.info({ topUpId: order.id }, "top-up order expired");
      await this.release(order);
    }
    return expired.length;
  }

  /** Releases an ended order's reservation; on failure it stays release_pending for the sweep. */
  private async release(order: TopUp): Promise<void> {
    if (!order.reservationToken) return;
    try {
      await this.deps.voucher.release(order.reservationToken);
      await store.markReleased(this.deps.db, order.id);
    } catch (err) {
      this.deps.log.warn({ err, topUpId: order.id }, "could not release the voucher yet; the sweep retries");
    }
  }

  /** Picks up orders a crash or an outage left mid-saga. */
  async resume(olderThanMs: number): Promise<number> {
    const orders = await store.unfinished(this.deps.db, olderThanMs, 100);
    for (const order of orders) {
      try {
        if (order.state === "processing") await this.process(order);
        else if (order.releasePending) await this.release(order);
      } catch (err) {
        this.deps.log.warn({ err, topUpId: order.id }, "could not resume a top-up order yet");
      }
    }
    return orders.length;
  }
}

const failedToReachOperator = (cause: unknown) =>
  new VouchError(Code.Unavailable, "TEMPORARILY_UNAVAILABLE", "the mobile operator cannot be reached right now; the order will be retried", { retryAfterMs: 1_000, cause });
