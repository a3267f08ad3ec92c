// What makes two transfer confirmations "the same request": the order's reference and the
// amount paid, whichever way they arrive (the admin rpc or the bank webhook), so the same
// bank transaction confirmed both ways completes the order once.
import { createHash } from "node:crypto";
import { normaliseReference, type Money } from "./domain/model.js";

export function confirmationFingerprint(reference: string, amountPaid: Money): string {
  return createHash("sha256").update(`${normaliseReference(reference)}\n${amountPaid.minor}\n${amountPaid.currency}`).digest("base64url");
}
