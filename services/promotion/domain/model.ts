// The promotion domain: campaigns, grants and top-up orders as the service reasons about
// them (no protobuf, no SQL), and the rules that need no database.
export interface Money {
  minor: bigint;
  currency: string;
}

export type Discount =
  | { kind: "percent"; basisPoints: number; cap?: Money }
  | { kind: "amount"; amount: Money };

export type CampaignType = "first_login" | "claim";
export type CampaignState = "draft" | "active" | "paused" | "ended";

export interface VoucherTerms {
  discount: Discount;
  minimum?: Money;
  validityDays: number;
  /** Empty means the service's default pattern. */
  codePattern: string;
}

export interface Campaign {
  id: string;
  name: string;
  description: string;
  type: CampaignType;
  quota: number;
  granted: number;
  state: CampaignState;
  terms: VoucherTerms;
  startAt: Date | null;
  endAt: Date | null;
  activatedAt: Date | null;
  bookId: string;
  createdAt: Date;
  updatedAt: Date;
}

export type GrantState = "pending_voucher" | "issued";

export interface Grant {
  id: string;
  campaignId: string;
  campaignName: string;
  campaignType: CampaignType;
  userId: string;
  state: GrantState;
  voucherId: string | null;
  createdAt: Date;
  issuedAt: Date | null;
}

export type TopUpState = "awaiting_transfer" | "processing" | "completed" | "expired" | "cancelled" | "failed";

export interface TopUp {
  id: string;
  userId: string;
  phoneNumber: string;
  amount: Money;
  voucherCode: string | null;
  voucherId: string | null;
  reservationToken: string | null;
  discount: Money | null;
  pay: Money;
  reference: string;
  deadlineAt: Date;
  state: TopUpState;
  confirmRequestId: string | null;
  redemptionId: string | null;
  operatorReference: string | null;
  failureMessage: string | null;
  releasePending: boolean;
  createdAt: Date;
  updatedAt: Date;
  confirmedAt: Date | null;
  finishedAt: Date | null;
}

export type Ineligibility = "ALREADY_PARTICIPATED" | "ENDED" | "PAUSED" | "NOT_STARTED" | "CAMPAIGN_FULL" | "NOT_FIRST_LOGIN";

/** A campaign is over once ended, or once its end time has passed (the sweep then ends it for good). */
export const isOver = (c: Pick<Campaign, "state" | "endAt">, now: Date) => c.state === "ended" || (c.endAt !== null && c.endAt <= now);

/**
 * Why the user cannot get the campaign's voucher now, or null when they can. The first
 * reason that applies wins, in the order the contract documents. A first-login campaign is
 * never claimable: a user asking is logged in, so their first login is behind them.
 */
export function ineligibility(c: Campaign, hasGrant: boolean, now: Date): Ineligibility | null {
  if (hasGrant) return "ALREADY_PARTICIPATED";
  if (isOver(c, now)) return "ENDED";
  if (c.state !== "active") return "PAUSED";
  if (c.startAt && c.startAt > now) return "NOT_STARTED";
  if (c.granted >= c.quota) return "CAMPAIGN_FULL";
  if (c.type === "first_login") return "NOT_FIRST_LOGIN";
  return null;
}

/**
 * What a voucher takes off an amount: the shared rule of `vouch.type.v1.Discount`: a
 * percentage is rounded down to the minor unit, then capped; never more than the amount.
 * Undefined when the voucher cannot be used on this amount (currency or minimum).
 */
export function discountFor(d: Discount, minimum: Money | undefined, amount: Money): Money | undefined {
  if (minimum && (minimum.currency !== amount.currency || amount.minor < minimum.minor)) return undefined;
  let off: bigint;
  if (d.kind === "percent") {
    if (d.cap && d.cap.currency !== amount.currency) return undefined;
    off = (amount.minor * BigInt(d.basisPoints)) / 10_000n;
    if (d.cap && off > d.cap.minor) off = d.cap.minor;
  } else {
    if (d.amount.currency !== amount.currency) return undefined;
    off = d.amount.minor;
  }
  return { minor: off > amount.minor ? amount.minor : off, currency: amount.currency };
}

// Transfer references: "VCH" and 8 characters of the unambiguous alphabet (no 0/O, 1/I/L),
// short enough to type into a banking app, 31^8 ≈ 8.5·10^11 values so a random one rarely
// collides (the unique index catches it when it does, and a new one is drawn).
const REFERENCE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";

export function newTransferReference(random: (n: number) => Buffer): string {
  let out = "VCH";
  while (out.length < 11) {
    for (const byte of random(16)) {
      // 248 = 8·31: rejection sampling keeps every character equally likely.
      if (byte < 248 && out.length < 11) out += REFERENCE_ALPHABET[byte % 31];
    }
  }
  return out;
}

/** How a reference is matched: case-insensitively, spaces and dashes ignored (banks mangle descriptions). */
export const normaliseReference = (typed: string) => typed.toUpperCase().replace(/[\s-]+/g, "");
