// The three identifiers a person can sign in with, and the rules that keep them apart.
//
// Each has one normal form, used for storage, uniqueness and look-up:
//   email     lower-cased (the whole address: providers that distinguish case in the
//             local part are vanishingly rare, and two accounts differing only by case
//             would be a support and phishing hazard);
//   phone     E.164 ("+84909123456"), parsed with libphonenumber-js's full metadata;
//   username  compared lower-cased (stored as typed, for display).
// They can never be confused: an email contains "@", which a username cannot; a phone
// number starts with "+", and a username starts with a letter. So classifying a login
// identifier needs no database look-up and is never ambiguous.
import { normalizePhone } from "../../kit/phone.js";
import type { FieldViolation } from "../../kit/errors.js";

export type IdentifierKind = "email" | "phone" | "username";

export interface Identifier {
  kind: IdentifierKind;
  /** The normal form: what is stored and compared. */
  value: string;
}

const USERNAME = /^[A-Za-z][A-Za-z0-9._-]{2,31}$/;
// Pragmatic, not RFC 5322: one "@", a local part of printable non-space characters, a
// domain of dot-separated LDH labels with a final label of letters. What it accepts can be
// delivered to; quoted local parts and IP-literal domains are refused on purpose.
const EMAIL = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$/;

export const normalizeUsername = (username: string) => username.trim().toLowerCase();
export const normalizeEmail = (email: string) => email.trim().toLowerCase();

export { normalizePhone };

export function usernameViolation(username: string, field = "username"): FieldViolation | undefined {
  const u = username.trim();
  if (!u) return { field, reason: "USERNAME_REQUIRED", description: "is required" };
  if (!USERNAME.test(u)) {
    return {
      field,
      reason: "USERNAME_INVALID",
      description: "must be 3 to 32 letters, digits, '.', '_' or '-', starting with a letter (so it can never look like an email or a phone number)",
    };
  }
  return undefined;
}

export function emailViolation(email: string, field = "email"): FieldViolation | undefined {
  const e = email.trim();
  if (!e) return { field, reason: "EMAIL_REQUIRED", description: "is required" };
  if (e.length > 254 || !EMAIL.test(e) || e.includes("..")) {
    return { field, reason: "EMAIL_INVALID", description: "must be an email address such as name@example.com" };
  }
  return undefined;
}

export function phoneViolation(phone: string, field = "phone_number"): FieldViolation | undefined {
  const p = phone.trim();
  if (!p) return { field, reason: "PHONE_NUMBER_REQUIRED", description: "is required" };
  if (!p.startsWith("+")) {
    return { field, reason: "PHONE_NUMBER_INVALID", description: "must start with '+' and the country code, e.g. +84909123456" };
  }
  if (!normalizePhone(p)) return { field, reason: "PHONE_NUMBER_INVALID", description: "is not a valid phone number" };
  return undefined;
}

/**
 * What a login identifier is, in normal form. Never fails: an identifier that cannot
 * belong to any account (a malformed phone number, say) still gets a stable normal form,
 * so that it is throttled like any other and answered like an unknown one.
 */
export function classifyIdentifier(raw: string): Identifier {
  const input = raw.trim();
  if (input.includes("@")) return { kind: "email", value: normalizeEmail(input) };
  if (input.startsWith("+")) return { kind: "phone", value: normalizePhone(input) ?? input.replace(/\s+/g, "") };
  return { kind: "username", value: normalizeUsername(input) };
}
