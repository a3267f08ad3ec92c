// Voucher use cases: assign and issue, read, validate, reserve, release, redeem, roll back,
// QR codes. Each limit is decided by one conditional statement in store/vouchers.ts; when
// it refuses, the row is read again only to say why (`explain`), with the same rules as
// ValidateVoucher (domain/model.ts `whyUnusable`).
import { createHash, randomBytes, randomInt } from "node:crypto";
import type { Kysely } from "kysely";
import QRCode from "qrcode";
import { newId } from "../kit/ids.js";
import { Code, VouchError, alreadyExists, failedPrecondition, notFound, permissionDenied } from "../kit/errors.js";
import type { Logger } from "../kit/log.js";
import type { RateLimiter } from "../kit/ratelimit.js";
import type { Redis } from "../kit/redis.js";
import {
  bookCurrency,
  computeDiscount,
  foreignReservation,
  whyUnusable,
  type Money,
  type PresentedReservation,
  type Unusable,
  type Voucher,
  type VoucherState,
} from "./domain/model.js";
import type { Idempotency, OnceOutcome as Outcome } from "../kit/idempotency.js";
import * as booksStore from "./store/books.js";
import type { VoucherDB } from "./store/schema.js";
import { isUniqueViolation, runOnce, transaction } from "./store/tx.js";
import * as store from "./store/vouchers.js";
import type { RedemptionFilter, RedemptionRow, ReservationRow } from "./store/vouchers.js";

/** Who is calling: a customer acts only for themselves; admins and services for anyone. */
export interface Actor {
  subject: string;
  privileged: boolean;
  phoneNumber?: string;
}

export interface Reserved {
  token: string;
  reservation: ReservationRow;
  voucher: Voucher;
  discount?: Money;
}

export interface Validation {
  unusable: Unusable | null;
  voucher?: Voucher;
  discount?: Money;
}

const PICK_RANGE = 2_147_483_647;
const QR_CACHE_SIZE = 2_000;
/** Redis key of a code's live lease, to refuse obvious contention before Postgres. */
export const leaseKey = (code: string) => `voucher:lease:${code}`;
/**
 * How long a lease marker lives at most, whatever the lease's own TTL (up to 24 h). A marker
 * left behind (its DEL lost in a Redis blip, the lease ended another way) refuses reserves
 * wrongly until it expires; a burst of contention is over in seconds, so a few suffice.
 */
export const LEASE_MARKER_MAX_MS = 5_000;
const hashToken = (token: string) => createHash("sha256").update(token).digest();

const iso = (d: Date | null | undefined) => (d ? d.toISOString() : "");

/** The error a refused reserve or redeem answers with, for each reason. */
export function unusableError(why: Unusable, v: Voucher | undefined): VouchError {
  switch (why) {
    case "UNKNOWN_CODE":
      return notFound("VOUCHER_NOT_FOUND", "no voucher has this code");
    case "NOT_OWNER":
      return permissionDenied("NOT_OWNER", "the voucher belongs to another user");
    case "BOOK_NOT_ACTIVE":
      return failedPrecondition("BOOK_NOT_ACTIVE", "the voucher's book is not active", { state: `BOOK_STATE_${v!.book.state.toUpperCase()}` });
    case "NOT_STARTED":
      return failedPrecondition("VOUCHER_NOT_STARTED", "the voucher is not usable yet", { startTime: iso(v!.book.startAt) });
    case "EXPIRED":
      return failedPrecondition("VOUCHER_EXPIRED", "the voucher has expired");
    case "ALREADY_REDEEMED":
      return failedPrecondition("VOUCHER_ALREADY_REDEEMED", "every use of the voucher has been redeemed");
    case "RESERVED_BY_OTHER":
      return failedPrecondition("VOUCHER_RESERVED", "another reservation holds the voucher", { expireTime: iso(v!.leaseExpiresAt) });
    case "USER_LIMIT_REACHED":
      return failedPrecondition("REDEMPTIONS_PER_USER_LIMIT_REACHED", "the user has reached the book's redemption limit", { limit: String(v!.book.maxRedemptionsPerUser) });
    case "CURRENCY_MISMATCH":
      return failedPrecondition("CURRENCY_MISMATCH", "the order's currency is not the voucher's", { currencyCode: bookCurrency(v!.book) ?? "" });
    case "MINIMUM_NOT_MET":
      return failedPrecondition("MINIMUM_ORDER_NOT_MET", "the order amount is below the voucher's minimum", {
        minimumMinorUnits: v!.book.minimumOrder!.minor.toString(),
        currencyCode: v!.book.minimumOrder!.currency,
      });
    case "RESERVATION_INVALID":
      return failedPrecondition("RESERVATION_INVALID", "the reservation token is unknown, not for this code and user, released or used already");
    case "RESERVATION_STALE":
      return failedPrecondition("RESERVATION_STALE", "the reservation expired and the code has been reserved again since");
  }
}

export class Vouchers {
  private readonly qrCache = new Map<string, Promise<{ png: Buffer; svg: string }>>();

  constructor(private readonly deps: { db: Kysely<VoucherDB>; redis: Redis; limiter: RateLimiter; log: Logger }) {}

  private get db() {
    return this.deps.db;
  }

  /** The user an actor acts for: themselves, or (admins and services) anyone. */
  actingFor(actor: Actor, userId: string): string {
    if (!userId || userId === actor.subject) return actor.subject;
    if (!actor.privileged) throw permissionDenied("NOT_OWNER", "a customer can act only for themselves (leave user_id empty)");
    return userId;
  }

  /** Says why a refused reserve/redeem was refused; the rules are ValidateVoucher's. */
  private async explain(
    trx: Kysely<VoucherDB>,
    code: string,
    userId: string,
    order: Money | undefined,
    opts: { reservation?: PresentedReservation; chargeMisses?: boolean } = {},
  ): Promise<never> {
    const { reservation, chargeMisses = false } = opts;
    const look = await store.findByCode(trx, code, userId);
    const why = whyUnusable(look.voucher, { code, userId, now: look.now, userRedemptions: look.userRedemptions, order, reservation });
    // A redeem that misses tells the caller whether a code exists (and whose it is): each
    // miss costs from the same per-user budget as ValidateVoucher (reserve pays up front),
    // so guessing codes through RedeemVoucher is throttled too; a redeem that succeeds never is.
    if (chargeMisses && (why === "UNKNOWN_CODE" || why === "NOT_OWNER")) await this.deps.limiter.enforce(userId);
    if (why) throw unusableError(why, look.voucher);
    // Nothing wrong any more: the row changed between the two statements. Safe to retry.
    throw new VouchError(Code.Aborted, "TRANSACTION_ABORTED", "the voucher changed concurrently; retry with the same request_id");
  }

  /** Claims a free code (random, or the one asked for) for the user, within the per-user maximum. */
  private async claim(trx: Kysely<VoucherDB>, bookId: string, userId: string, code: string | undefined, grantId: string | null): Promise<Voucher> {
    const book = await booksStore.findBook(trx, bookId);
    if (!book) throw notFound("BOOK_NOT_FOUND", `book ${bookId} does not exist`, { bookId });
    if (book.state !== "active") throw failedPrecondition("BOOK_NOT_ACTIVE", "the book is not active", { state: `BOOK_STATE_${book.state.toUpperCase()}` });
    const now = await store.dbNow(trx);
    if (book.endAt && now >= book.endAt) throw failedPrecondition("VOUCHER_EXPIRED", "the book's codes have expired");
    const voucher = code
      ? await store.claimSpecificCode(trx, bookId, code, userId)
      : await store.claimFreeCode(trx, bookId, userId, grantId, randomInt(PICK_RANGE));
    if (!voucher) {
      if (!code) throw failedPrecondition("BOOK_SOLD_OUT", "the book has no free code left", { bookId });
      const look = await store.findByCode(trx, code, userId);
      if (!look.voucher || look.voucher.book.id !== bookId) throw notFound("VOUCHER_NOT_FOUND", "the book has no such code");
      throw failedPrecondition("CODE_ALREADY_ASSIGNED", "the code is already assigned");
    }
    if (!(await store.countHolding(trx, bookId, userId, book.maxCodesPerUser))) {
      throw failedPrecondition("CODES_PER_USER_LIMIT_REACHED", "the user already holds the book's maximum number of codes", { limit: String(book.maxCodesPerUser) });
    }
    return voucher;
  }

  assign(bookId: string, userId: string, code: string | undefined, idem?: Idempotency<Voucher>): Promise<Outcome<Voucher>> {
    return runOnce(this.db, idem, (trx) => this.claim(trx, bookId, userId, code, null));
  }

  /**
   * The voucher of a promotion grant, exactly once: `codes.grant_id` is unique, so of two
   * concurrent first calls one commits and the other fails on the index, rolls back (its
   * claimed code is free again) and, retried, finds the first one's voucher.
   */
  async issue(grantId: string, bookId: string, userId: string): Promise<Voucher> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await transaction(this.db, async (trx) => {
          const existing = await store.findByGrant(trx, grantId);
          if (existing) {
            if (existing.book.id !== bookId || existing.ownerUserId !== userId) {
              throw alreadyExists("REQUEST_ID_REUSED", "this grant id was issued for another book or user", { grantId });
            }
            return existing;
          }
          return this.claim(trx, bookId, userId, undefined, grantId);
        });
      } catch (err) {
        if (attempt < 3 && isUniqueViolation(err, "codes_grant")) continue;
        throw err;
      }
    }
  }

  /** One voucher; a customer sees only theirs (NOT_OWNER whether or not the id exists). */
  async get(actor: Actor, id: string): Promise<Voucher> {
    const v = await store.findById(this.db, id);
    if (!actor.privileged && v?.ownerUserId !== actor.subject) throw permissionDenied("NOT_OWNER", "not your voucher");
    if (!v) throw notFound("VOUCHER_NOT_FOUND", `voucher ${id} does not exist`, { voucherId: id });
    return v;
  }

  async batchGet(actor: Actor, ids: string[]): Promise<Voucher[]> {
    const found = new Map((await store.findByIds(this.db, [...new Set(ids)])).map((v) => [v.id, v]));
    if (!actor.privileged && ids.some((id) => found.get(id)?.ownerUserId !== actor.subject)) throw permissionDenied("NOT_OWNER", "not all of these vouchers are yours");
    const missing = ids.find((id) => !found.has(id));
    // `!== undefined`: an empty id is missing too (it is falsy).
    if (missing !== undefined) throw notFound("VOUCHER_NOT_FOUND", `voucher ${missing} does not exist`, { voucherId: missing });
    return ids.map((id) => found.get(id)!);
  }

  listOwned(userId: string, state: VoucherState | undefined, after: { assignedAt: Date; id: string } | undefined, limit: number) {
    return store.listOwned(this.db, userId, state, after, limit);
  }

  list(filter: store.VoucherFilter, afterCode: string | undefined, limit: number) {
    return store.listByCode(this.db, filter, afterCode, limit);
  }

  /** PNG and SVG of the code's text (nothing else), cached: a code's QR never changes. */
  qr(voucher: Voucher, sizePx: number): Promise<{ png: Buffer; svg: string }> {
    const key = `${voucher.code}:${sizePx}`;
    let hit = this.qrCache.get(key);
    if (!hit) {
      hit = (async () => ({
        png: await QRCode.toBuffer(voucher.code, { type: "png", width: sizePx, margin: 2, errorCorrectionLevel: "M" }),
        svg: await QRCode.toString(voucher.code, { type: "svg", margin: 2, errorCorrectionLevel: "M" }),
      }))();
      hit.catch(() => this.qrCache.delete(key));
      this.qrCache.set(key, hit);
      if (this.qrCache.size > QR_CACHE_SIZE) this.qrCache.delete(this.qrCache.keys().next().value as string);
    }
    return hit;
  }

  /**
   * Rate-limited per user so codes cannot be found by guessing. With a reservation token the
   * answer is redeem's with that token, in redeem's order of checks.
   */
  async validate(code: string, userId: string, order: Money | undefined, reservationToken?: string): Promise<Validation> {
    await this.deps.limiter.enforce(userId);
    const reservation = reservationToken ? ((await store.findReservation(this.db, hashToken(reservationToken))) ?? null) : undefined;
    const look = await store.findByCode(this.db, code, userId);
    const unusable = whyUnusable(look.voucher, { code, userId, now: look.now, userRedemptions: look.userRedemptions, order, reservation });
    if (unusable) return { unusable };
    return { unusable: null, voucher: look.voucher, discount: order && computeDiscount(look.voucher!.book.discount, order) };
  }

  async reserve(code: string, userId: string, order: Money | undefined, ttlMs: number, idem?: Idempotency<Reserved>): Promise<Outcome<Reserved>> {
    await this.deps.limiter.enforce(userId);
    await this.shedIfLeased(code, idem?.key.requestId ?? "");
    const outcome = await runOnce(this.db, idem, async (trx) => {
      const voucher = await store.takeLease(trx, code, userId, order, ttlMs);
      if (!voucher) return this.explain(trx, code, userId, order);
      const token = `rsv_${randomBytes(32).toString("base64url")}`;
      const reservation = await store.insertReservation(trx, { id: newId(), tokenHash: hashToken(token), voucher, userId });
      return { token, reservation, voucher, discount: order && computeDiscount(voucher.book.discount, order) };
    });
    if ("result" in outcome) void this.markLeased(code, outcome.result.reservation, idem?.key.requestId ?? "");
    return outcome;
  }

  /**
   * Redis sheds contention only: a code known to be leased is refused without a database
   * round trip. Every success is decided by Postgres; when Redis is slow or down this is skipped.
   */
  private async shedIfLeased(code: string, requestId: string): Promise<void> {
    let marker: string | null = null;
    try {
      marker = await Promise.race([this.deps.redis.get(leaseKey(code)), new Promise<null>((r) => setTimeout(() => r(null), 50).unref())]);
    } catch {
      return;
    }
    if (!marker) return;
    const { requestId: holder, expireTime } = JSON.parse(marker) as { requestId: string; expireTime: string };
    if (requestId && holder === requestId) return; // a retry of the holder's own request: let the database replay it
    if (Date.parse(expireTime) > Date.now()) {
      throw failedPrecondition("VOUCHER_RESERVED", "another reservation holds the voucher", { expireTime });
    }
  }

  private async markLeased(code: string, r: ReservationRow, requestId: string): Promise<void> {
    const ttl = Math.min(r.expiresAt.getTime() - Date.now(), LEASE_MARKER_MAX_MS);
    if (ttl <= 0) return;
    await this.deps.redis
      .set(leaseKey(code), JSON.stringify({ requestId, expireTime: r.expiresAt.toISOString() }), "PX", Math.ceil(ttl))
      .catch((err: unknown) => this.deps.log.debug({ err }, "cannot record the lease in redis"));
  }

  private forgetLease(code: string): void {
    void this.deps.redis.del(leaseKey(code)).catch((err: unknown) => this.deps.log.debug({ err }, "cannot clear the lease in redis"));
  }

  /** Ends a lease early; unknown, used, released or superseded tokens change nothing. */
  async release(actor: Actor, token: string): Promise<void> {
    const released = await transaction(this.db, async (trx) => {
      const r = await store.findReservation(trx, hashToken(token));
      if (!r) return undefined;
      if (!actor.privileged && r.userId !== actor.subject) throw permissionDenied("NOT_OWNER", "the reservation belongs to another user");
      return (await store.releaseLease(trx, r)) ? r : undefined;
    });
    if (released) this.forgetLease(released.code);
  }

  async redeem(
    input: { code: string; userId: string; orderReference: string; order: Money; reservationToken?: string },
    idem: Idempotency<RedemptionRow>,
  ): Promise<Outcome<RedemptionRow>> {
    const { code, userId, order } = input;
    const outcome = await runOnce(this.db, idem, async (trx) => {
      let reservation: ReservationRow | undefined;
      if (input.reservationToken) {
        reservation = await store.findReservation(trx, hashToken(input.reservationToken));
        // Before the write: a foreign reservation's fence could match this code's by chance.
        if (foreignReservation(reservation ?? null, code, userId)) throw unusableError("RESERVATION_INVALID", undefined);
      }
      const redemptionId = newId();
      const { voucher, reservationUsed, counted, redemption } = await store.redeemOnce(trx, {
        code,
        userId,
        order,
        reservation: reservation ? { id: reservation.id, fence: reservation.fence } : null,
        redemptionId,
        orderReference: input.orderReference,
      });
      if (!voucher) {
        return this.explain(trx, code, userId, order, { reservation, chargeMisses: true });
      }
      // A refusal below throws, and the transaction takes the use back.
      if (reservation && !reservationUsed) throw unusableError("RESERVATION_INVALID", voucher);
      if (!counted || !redemption) throw unusableError("USER_LIMIT_REACHED", voucher);
      const discount = computeDiscount(voucher.book.discount, order);
      if (redemption.discount.minor !== discount.minor) {
        throw new Error(`redemption discount ${redemption.discount.minor} computed by the database differs from the domain's ${discount.minor}`);
      }
      return redemption;
    });
    if ("result" in outcome && input.reservationToken) this.forgetLease(code);
    return outcome;
  }

  /** Undoes a redemption once, under the code's lock (the first lock a redemption takes). */
  rollback(id: string, reason: string, idem?: Idempotency<RedemptionRow>): Promise<Outcome<RedemptionRow>> {
    return runOnce(this.db, idem, async (trx) => {
      const redemption = await store.findRedemption(trx, id);
      if (!redemption) throw notFound("REDEMPTION_NOT_FOUND", `redemption ${id} does not exist`, { redemptionId: id });
      await store.lockCode(trx, redemption.codeId);
      const rolled = await store.rollBack(trx, id, reason);
      if (!rolled) throw failedPrecondition("REDEMPTION_ALREADY_ROLLED_BACK", "the redemption was already rolled back", { redemptionId: id });
      return rolled;
    });
  }

  async redemption(id: string): Promise<RedemptionRow> {
    const r = await store.findRedemption(this.db, id);
    if (!r) throw notFound("REDEMPTION_NOT_FOUND", `redemption ${id} does not exist`, { redemptionId: id });
    return r;
  }

  redemptions(filter: RedemptionFilter, beforeId: string | undefined, limit: number) {
    return store.listRedemptions(this.db, filter, beforeId, limit);
  }
}
