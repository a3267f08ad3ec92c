// The voucher domain: books, vouchers and their rules. Plain data and pure functions; no
// SQL, no protobuf. The store returns these shapes; the routes map them to the contract.

export interface Money {
  minor: bigint;
  currency: string;
}

export type Discount = { kind: "percent"; basisPoints: number; cap: Money | null } | { kind: "amount"; amount: Money };

export type BookState = "draft" | "active" | "paused" | "archived";

export interface Book {
  id: string;
  name: string;
  description: string;
  discount: Discount;
  minimumOrder: Money | null;
  startAt: Date | null;
  endAt: Date | null;
  codeValidityMs: number | null;
  codePattern: string;
  usesPerCode: number;
  maxCodesPerUser: number;
  maxRedemptionsPerUser: number;
  autoTopUpThreshold: number;
  autoTopUpBatchSize: number;
  state: BookState;
  generatedCount: bigint;
  importedCount: bigint;
  createdAt: Date;
  updatedAt: Date;
}

/** The settings of a book a client may choose (create and update). */
export type BookSettings = Omit<Book, "id" | "state" | "generatedCount" | "importedCount" | "createdAt" | "updatedAt">;

export type VoucherState = "free" | "assigned" | "reserved" | "redeemed" | "expired";

export interface Voucher {
  id: string;
  book: Book;
  code: string;
  ownerUserId: string | null;
  grantId: string | null;
  assignedAt: Date | null;
  useCount: number;
  fence: bigint;
  leaseExpiresAt: Date | null;
  lastRedeemedAt: Date | null;
  createdAt: Date;
}

/** The one currency a book's amounts are in, if any: an order in another currency cannot use it. */
export function bookCurrency(b: Pick<Book, "discount" | "minimumOrder">): string | null {
  if (b.discount.kind === "amount") return b.discount.amount.currency;
  return b.discount.cap?.currency ?? b.minimumOrder?.currency ?? null;
}

/** When a voucher expires: the earlier of its book's end and its assignment plus the code validity. */
export function expireTime(v: Pick<Voucher, "book" | "assignedAt">): Date | null {
  const ends: number[] = [];
  if (v.book.endAt) ends.push(v.book.endAt.getTime());
  if (v.assignedAt && v.book.codeValidityMs !== null) ends.push(v.assignedAt.getTime() + v.book.codeValidityMs);
  return ends.length ? new Date(Math.min(...ends)) : null;
}

export function isExpired(v: Pick<Voucher, "book" | "assignedAt">, now: Date): boolean {
  const end = expireTime(v);
  return end !== null && now.getTime() >= end.getTime();
}

export const leaseLive = (v: Pick<Voucher, "leaseExpiresAt">, now: Date) =>
  v.leaseExpiresAt !== null && v.leaseExpiresAt.getTime() > now.getTime();

/** Where a voucher is in its life. The same precedence as `voucherStateSql` in the store. */
export function voucherState(v: Voucher, now: Date): VoucherState {
  if (v.useCount >= v.book.usesPerCode) return "redeemed";
  if (isExpired(v, now)) return "expired";
  if (v.ownerUserId === null) return "free";
  if (leaseLive(v, now)) return "reserved";
  return "assigned";
}

/**
 * Why a voucher cannot be redeemed by `userId` for an order, or null when it can. The
 * order of the checks is the contract's (InvalidVoucherReason): someone who does not own a
 * code learns only that it is not theirs; a free code looks like an unknown one.
 */
export type Unusable =
  | "UNKNOWN_CODE"
  | "NOT_OWNER"
  | "BOOK_NOT_ACTIVE"
  | "NOT_STARTED"
  | "EXPIRED"
  | "ALREADY_REDEEMED"
  | "RESERVED_BY_OTHER"
  | "USER_LIMIT_REACHED"
  | "CURRENCY_MISMATCH"
  | "MINIMUM_NOT_MET"
  | ReservationProblem;

/** What is wrong with a reservation token presented with a code (redeem, validate). */
export type ReservationProblem = "RESERVATION_INVALID" | "RESERVATION_STALE";

/** The reservation a token stands for, as the rules need it. */
export interface PresentedReservation {
  userId: string;
  code: string;
  fence: bigint;
  releasedAt: Date | null;
  usedAt: Date | null;
}

/** A presented token that cannot stand for this code and user: it matches no reservation (null), or another's. */
export const foreignReservation = (r: PresentedReservation | null, code: string, userId: string) => !r || r.userId !== userId || r.code !== code;

export interface UsabilityQuestion {
  /** The code as asked for (normalised). */
  code: string;
  userId: string;
  now: Date;
  /** The user's redemptions in effect in the voucher's book. */
  userRedemptions: number;
  order?: Money;
  /**
   * The reservation whose token came with the code: undefined when none came, null when the
   * token matches none. While it is the code's latest, its own lease is no obstacle.
   */
  reservation?: PresentedReservation | null;
}

export function whyUnusable(v: Voucher | undefined, q: UsabilityQuestion): Unusable | null {
  const r = q.reservation;
  if (r !== undefined && foreignReservation(r, q.code, q.userId)) return "RESERVATION_INVALID";
  if (r && v && v.fence > r.fence) return "RESERVATION_STALE";
  if (!v || v.ownerUserId === null) return "UNKNOWN_CODE";
  if (v.ownerUserId !== q.userId) return "NOT_OWNER";
  if (v.book.state !== "active") return "BOOK_NOT_ACTIVE";
  if (v.book.startAt && q.now.getTime() < v.book.startAt.getTime()) return "NOT_STARTED";
  if (isExpired(v, q.now)) return "EXPIRED";
  if (v.useCount >= v.book.usesPerCode) return "ALREADY_REDEEMED";
  if (!r && leaseLive(v, q.now)) return "RESERVED_BY_OTHER";
  if (v.book.maxRedemptionsPerUser > 0 && q.userRedemptions >= v.book.maxRedemptionsPerUser) return "USER_LIMIT_REACHED";
  if (q.order) {
    const currency = bookCurrency(v.book);
    if (currency !== null && currency !== q.order.currency) return "CURRENCY_MISMATCH";
    if (v.book.minimumOrder && q.order.minor < v.book.minimumOrder.minor) return "MINIMUM_NOT_MET";
  }
  if (r && (r.releasedAt || r.usedAt)) return "RESERVATION_INVALID";
  return null;
}

/**
 * The discount an order gets: a percentage rounded down to the minor unit, then capped; a
 * fixed amount; never more than the order.
 */
export function computeDiscount(discount: Discount, order: Money): Money {
  let minor: bigint;
  if (discount.kind === "percent") {
    minor = (order.minor * BigInt(discount.basisPoints)) / 10_000n;
    if (discount.cap && minor > discount.cap.minor) minor = discount.cap.minor;
  } else {
    minor = discount.amount.minor;
  }
  if (minor > order.minor) minor = order.minor;
  if (minor < 0n) minor = 0n;
  return { minor, currency: order.currency };
}

/** Allowed state changes of a book (custom methods), and which are no-ops. */
export function bookTransition(from: BookState, to: "active" | "paused" | "archived"): "change" | "noop" | "invalid" {
  if (from === to) return "noop";
  if (to === "archived") return "change";
  if (to === "active") return from === "draft" || from === "paused" ? "change" : "invalid";
  return from === "active" ? "change" : "invalid";
}

/** Fields frozen once a book has left DRAFT, so vouchers already handed out keep their value. */
export const FROZEN_AFTER_DRAFT = new Set(["discount", "uses_per_code"]);
