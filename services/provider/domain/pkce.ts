// PKCE (RFC 7636) as the provider's callbacks use it: on acknowledging a request the
// provider sends code_challenge = BASE64URL(SHA256(code_verifier)) and keeps the verifier;
// its callback proves it is the same party by revealing the verifier. We accept S256 only:
// with `plain` the challenge *is* the verifier, so anyone who saw the acknowledgement could
// forge the callback.
import { createHash, timingSafeEqual } from "node:crypto";

/** RFC 7636 §4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~". */
export const VERIFIER_PATTERN = /^[A-Za-z0-9\-._~]{43,128}$/;
/** A S256 challenge is the base64url (no padding) of a 32-byte digest: always 43 characters. */
const CHALLENGE_PATTERN = /^[A-Za-z0-9\-_]{43}$/;

export const SUPPORTED_METHOD = "S256";

export type VerifierProblem = "VERIFIER_LENGTH" | "VERIFIER_CHARSET";

/** Why a verifier is malformed, or undefined when it is well-formed. */
export function verifierProblem(verifier: string): VerifierProblem | undefined {
  if (verifier.length < 43 || verifier.length > 128) return "VERIFIER_LENGTH";
  if (!VERIFIER_PATTERN.test(verifier)) return "VERIFIER_CHARSET";
  return undefined;
}

export function isS256Challenge(challenge: string): boolean {
  return CHALLENGE_PATTERN.test(challenge);
}

/** BASE64URL(SHA256(ASCII(verifier))), RFC 7636 §4.2. */
export function s256Challenge(verifier: string): string {
  return createHash("sha256").update(verifier, "ascii").digest("base64url");
}

/**
 * True when `verifier` is well-formed and BASE64URL(SHA256(verifier)) equals `challenge`.
 * The two 43-character encodings are compared in constant time, so the time taken says
 * nothing about how many leading characters matched. (Text, not decoded bytes: the last
 * character of a 43-character base64url carries 2 spare bits, and a challenge that differs
 * only in those is not the one RFC 7636 says to compare with.)
 */
export function verifierMatches(verifier: string, challenge: string): boolean {
  if (verifierProblem(verifier) || !isS256Challenge(challenge)) return false;
  const expected = Buffer.from(challenge, "ascii");
  const actual = Buffer.from(s256Challenge(verifier), "ascii");
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
