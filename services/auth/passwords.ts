// Password hashing and the password rules (NIST SP 800-63B: length, not composition;
// refuse known-common passwords).
//
// Hashes are argon2id PHC strings ("$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>") from
// @node-rs/argon2, which computes on libuv's thread pool so the event loop stays free.
// The parameters are in each hash, so raising CURRENT_PARAMS later is safe: old hashes
// still verify, and a successful login re-hashes them (`needsRehash`).
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { hash, parseOptions, verify, type Algorithm } from "@node-rs/argon2";
import type { FieldViolation } from "../kit/errors.js";

export interface Argon2Params {
  /** KiB of memory. */
  memoryCost: number;
  /** Passes over the memory. */
  timeCost: number;
  parallelism: number;
}

/** OWASP's minimum for argon2id (m=19 MiB, t=2, p=1). Only ever raise these. */
export const CURRENT_PARAMS: Argon2Params = { memoryCost: 19_456, timeCost: 2, parallelism: 1 };

const ARGON2ID = 2 as Algorithm; // Algorithm.Argon2id (an ambient const enum, unusable under isolatedModules)

export const MIN_PASSWORD_LENGTH = 8;
export const MAX_PASSWORD_LENGTH = 128;

/**
 * Passwords are compared after Unicode NFKC normalisation, so the same password typed on
 * two keyboards (composed vs decomposed accents, full-width digits) is the same password.
 */
export const normalizePassword = (password: string) => password.normalize("NFKC");

export function hashPassword(password: string, params: Argon2Params = CURRENT_PARAMS): Promise<string> {
  return hash(normalizePassword(password), { ...params, algorithm: ARGON2ID });
}

/** False for a wrong password and for a hash that cannot be parsed (never throws for those). */
export async function verifyPassword(passwordHash: string, password: string): Promise<boolean> {
  try {
    return await verify(passwordHash, normalizePassword(password));
  } catch {
    return false;
  }
}

/** True when the hash was made with weaker parameters (or another algorithm) than today's. */
export function needsRehash(passwordHash: string, params: Argon2Params = CURRENT_PARAMS): boolean {
  try {
    const used = parseOptions(passwordHash);
    return (
      used.algorithm !== ARGON2ID ||
      used.memoryCost < params.memoryCost ||
      used.timeCost < params.timeCost ||
      used.parallelism < params.parallelism
    );
  } catch {
    return true;
  }
}

/**
 * A hash of a random password at today's parameters. Verifying a login against it when the
 * identifier is unknown makes that answer take as long as a wrong password does.
 */
export function createDummyHash(): Promise<string> {
  return hashPassword(randomUUID());
}

// The common-password list: zxcvbn-ts's "passwords-common" dictionary (≈49,000 entries
// from leaked-password frequency lists, ≈18,000 of them 8 characters or longer), from the
// maintained @zxcvbn-ts/language-common package. Its src/ holds the plain JSON array.
let commonPasswords: Set<string> | undefined;
export function commonPasswordList(): Set<string> {
  if (!commonPasswords) {
    const path = createRequire(import.meta.url).resolve("@zxcvbn-ts/language-common/src/passwords.json");
    const list = JSON.parse(readFileSync(path, "utf8")) as string[];
    commonPasswords = new Set(list.map((p) => normalizePassword(p).toLowerCase()));
  }
  return commonPasswords;
}

export const isCommonPassword = (password: string) => commonPasswordList().has(normalizePassword(password).toLowerCase());

/**
 * The rules a new password must meet: 8 to 128 characters (code points, after
 * normalisation), any characters, not a common password, not one of the account's own
 * identifiers. No composition rules.
 */
export function passwordViolation(password: string, field: string, identifiers: string[] = []): FieldViolation | undefined {
  const normalized = normalizePassword(password);
  const length = [...normalized].length;
  if (length < MIN_PASSWORD_LENGTH) {
    return { field, reason: "PASSWORD_TOO_SHORT", description: `must be at least ${MIN_PASSWORD_LENGTH} characters` };
  }
  if (length > MAX_PASSWORD_LENGTH) {
    return { field, reason: "PASSWORD_TOO_LONG", description: `must be at most ${MAX_PASSWORD_LENGTH} characters` };
  }
  if (isCommonPassword(normalized)) {
    return { field, reason: "PASSWORD_TOO_COMMON", description: "is too common: it appears in lists of leaked passwords" };
  }
  const lower = normalized.toLowerCase();
  if (identifiers.some((id) => id && id.toLowerCase() === lower)) {
    return { field, reason: "PASSWORD_IS_IDENTIFIER", description: "must not be your username, email or phone number" };
  }
  return undefined;
}
