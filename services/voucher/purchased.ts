// Codes bought from the outside provider: stored once per code request (from the
// `provider.code_received` event, or StorePurchasedCode for reconciliation) and announced
// by `voucher.purchased_code_stored` in the same transaction — the provider delivers a code
// only after that, so no customer ever holds a code we have no record of —, listed by
// phone number for the phone's owner or an admin.
import type { Kysely, Transaction } from "kysely";
import { purchasedCodeStoredRow } from "./events.js";
import { newId } from "../kit/ids.js";
import { alreadyExists, notFound, permissionDenied } from "../kit/errors.js";
import * as store from "./store/purchased.js";
import type { PurchasedCode } from "./store/purchased.js";
import type { VoucherDB } from "./store/schema.js";
import { transaction } from "./store/tx.js";
import type { Actor } from "./vouchers.js";

export type PurchaseInput = Omit<PurchasedCode, "id" | "createdAt">;

export const E164 = /^\+[1-9]\d{6,14}$/;

/**
 * Stores a code and announces it; a repeat for the same code request returns the stored
 * one and announces nothing, and a different code or phone under the same request id is
 * refused (REQUEST_ID_REUSED).
 */
export async function storePurchase(trx: Transaction<VoucherDB>, input: PurchaseInput): Promise<PurchasedCode> {
  const purchase = { id: newId(), ...input, createdAt: new Date() };
  const stored = await store.storePurchased(trx, purchase, purchasedCodeStoredRow(purchase));
  if (stored.code !== input.code || stored.phoneNumber !== input.phoneNumber || stored.userId !== input.userId) {
    throw alreadyExists("REQUEST_ID_REUSED", "this code request already stored a different code or phone number", { codeRequestId: input.codeRequestId });
  }
  return stored;
}

export class Purchases {
  constructor(private readonly deps: { db: Kysely<VoucherDB> }) {}

  store(input: PurchaseInput): Promise<PurchasedCode> {
    return transaction(this.deps.db, (trx) => storePurchase(trx, input));
  }

  /** A customer sees codes for their own phone number or that they requested (NOT_OWNER otherwise, even for unknown ids). */
  async get(actor: Actor, id: string): Promise<PurchasedCode> {
    const p = await store.findPurchased(this.deps.db, id);
    const mine = p && (p.userId === actor.subject || (actor.phoneNumber !== undefined && p.phoneNumber === actor.phoneNumber));
    if (!actor.privileged && !mine) throw permissionDenied("NOT_OWNER", "not a code of your phone number");
    if (!p) throw notFound("PURCHASED_CODE_NOT_FOUND", `purchased code ${id} does not exist`, { purchasedCodeId: id });
    return p;
  }

  list(actor: Actor, phone: string, beforeId: string | undefined, limit: number): Promise<PurchasedCode[]> {
    if (!actor.privileged && actor.phoneNumber !== phone) throw permissionDenied("NOT_OWNER", "you may list only your own phone number's codes");
    return store.listPurchasedByPhone(this.deps.db, phone, beforeId, limit);
  }
}
