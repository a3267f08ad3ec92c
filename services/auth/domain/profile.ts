// The rules of a user's profile: what a valid registration or profile change is, in
// normal form. Pure functions: no protocol types, no SQL.
import type { FieldViolation } from "../../kit/errors.js";
import { passwordViolation } from "../passwords.js";
import {
  emailViolation,
  normalizeEmail,
  normalizePhone,
  normalizeUsername,
  phoneViolation,
  usernameViolation,
} from "./identifiers.js";

/** A profile in normal form, ready to store. */
export interface Profile {
  fullName: string;
  /** As typed (trimmed), for display. */
  username: string;
  /** Lower-cased: what uniqueness and login use. */
  usernameKey: string;
  email: string;
  /** E.164. */
  phoneNumber: string;
  /** "YYYY-MM-DD", or null when not given. */
  birthday: string | null;
}

export interface ProfileInput {
  fullName: string;
  username: string;
  email: string;
  phoneNumber: string;
  birthday: string;
}

export const UPDATABLE_PROFILE_FIELDS = ["full_name", "username", "email", "phone_number", "birthday"] as const;
export type ProfileField = (typeof UPDATABLE_PROFILE_FIELDS)[number];

export type Validated<T> = { ok: true; value: T } | { ok: false; violations: FieldViolation[] };

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

function fullNameViolation(fullName: string): FieldViolation | undefined {
  const name = fullName.trim();
  if (!name) return { field: "full_name", reason: "FULL_NAME_REQUIRED", description: "is required" };
  if ([...name].length > 200) return { field: "full_name", reason: "FULL_NAME_TOO_LONG", description: "must be at most 200 characters" };
  if (CONTROL.test(name)) return { field: "full_name", reason: "FULL_NAME_INVALID", description: "must not contain control characters" };
  return undefined;
}

/** A real calendar date "YYYY-MM-DD", not in the future and not before 1900. */
function birthdayViolation(birthday: string, today = new Date()): FieldViolation | undefined {
  if (!birthday) return undefined;
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(birthday);
  const date = match ? new Date(Date.UTC(+match[1], +match[2] - 1, +match[3])) : undefined;
  if (!match || !date || date.toISOString().slice(0, 10) !== birthday) {
    return { field: "birthday", reason: "BIRTHDAY_INVALID", description: "must be a calendar date YYYY-MM-DD" };
  }
  if (date.getTime() >= today.getTime() || +match[1] < 1900) {
    return { field: "birthday", reason: "BIRTHDAY_OUT_OF_RANGE", description: "must be a date in the past, after 1900" };
  }
  return undefined;
}

function violationOf(field: ProfileField, input: ProfileInput): FieldViolation | undefined {
  switch (field) {
    case "full_name":
      return fullNameViolation(input.fullName);
    case "username":
      return usernameViolation(input.username);
    case "email":
      return emailViolation(input.email);
    case "phone_number":
      return phoneViolation(input.phoneNumber);
    case "birthday":
      return birthdayViolation(input.birthday.trim());
  }
}

function normalized(field: ProfileField, input: ProfileInput): Partial<Profile> {
  switch (field) {
    case "full_name":
      return { fullName: input.fullName.trim() };
    case "username":
      return { username: input.username.trim(), usernameKey: normalizeUsername(input.username) };
    case "email":
      return { email: normalizeEmail(input.email) };
    case "phone_number":
      return { phoneNumber: normalizePhone(input.phoneNumber)! };
    case "birthday":
      return { birthday: input.birthday.trim() || null };
  }
}

/** Validates a registration: every field, and the password against the rules and the account's identifiers. */
export function validateRegistration(input: ProfileInput & { password: string }): Validated<Profile> {
  const violations: FieldViolation[] = [];
  for (const field of UPDATABLE_PROFILE_FIELDS) {
    const v = violationOf(field, input);
    if (v) violations.push(v);
  }
  const pw = passwordViolation(input.password, "password", [input.username.trim(), input.email.trim(), input.phoneNumber.trim()]);
  if (pw) violations.push(pw);
  if (violations.length) return { ok: false, violations };
  const profile = Object.assign({}, ...UPDATABLE_PROFILE_FIELDS.map((f) => normalized(f, input))) as Profile;
  return { ok: true, value: profile };
}

/** Validates a partial update: only the fields named in `paths`, each one an updatable field. */
export function validateProfileUpdate(paths: string[], input: ProfileInput): Validated<Partial<Profile>> {
  if (paths.length === 0) {
    return { ok: false, violations: [{ field: "update_mask", reason: "UPDATE_MASK_REQUIRED", description: `name the fields to update: ${UPDATABLE_PROFILE_FIELDS.join(", ")}` }] };
  }
  const violations: FieldViolation[] = [];
  for (const path of paths) {
    if (!(UPDATABLE_PROFILE_FIELDS as readonly string[]).includes(path)) {
      violations.push({ field: "update_mask", reason: "UPDATE_MASK_INVALID", description: `"${path}" cannot be updated; allowed: ${UPDATABLE_PROFILE_FIELDS.join(", ")}` });
    }
  }
  const fields = [...new Set(paths)].filter((p): p is ProfileField => (UPDATABLE_PROFILE_FIELDS as readonly string[]).includes(p));
  for (const field of fields) {
    const v = violationOf(field, input);
    if (v) violations.push({ ...v, field: `user.${v.field}` });
  }
  if (violations.length) return { ok: false, violations };
  return { ok: true, value: Object.assign({}, ...fields.map((f) => normalized(f, input))) as Partial<Profile> };
}
