// Access tokens (JWT, RFC 9068 profile) and refresh tokens (opaque).
import { createHash, randomBytes } from "node:crypto";
import { SignJWT } from "jose";
import { ACCESS_TOKEN_TYPE } from "../kit/auth.js";
import { newId } from "../kit/ids.js";
import { MAX_ACCESS_TOKEN_TTL_MS } from "../kit/revocation.js";
import { SIGNING_ALGORITHM, type KeyRing } from "./keys.js";

export interface TokenIssuer {
  keys: KeyRing;
  issuer: string;
  audience: string;
}

export interface AccessTokenGrant {
  /** User id, or a service's client id. */
  subject: string;
  /** "CUSTOMER", "ADMIN", "SERVICE". */
  roles: readonly string[];
  /** E.164, for "owner of this phone number" checks in other services. */
  phoneNumber?: string;
  ttlMs: number;
}

export interface IssuedAccessToken {
  token: string;
  tokenId: string;
  issuedAt: Date;
  expiresAt: Date;
}

/**
 * Signs an access token. The `jti` is a UUIDv7 whose timestamp is the issue time in ms
 * and `iat` is that time in seconds, so verifiers can compare the issue time with a
 * revocation cutoff to the millisecond (see kit/revocation.ts).
 */
export async function issueAccessToken(issuer: TokenIssuer, grant: AccessTokenGrant): Promise<IssuedAccessToken> {
  if (grant.ttlMs > MAX_ACCESS_TOKEN_TTL_MS) throw new Error("access tokens live at most 15 minutes");
  const { kid, privateKey } = issuer.keys.signingKey();
  const tokenId = newId();
  const issuedMs = parseInt(tokenId.replace(/-/g, "").slice(0, 12), 16);
  const iat = Math.floor(issuedMs / 1000);
  const exp = iat + Math.floor(grant.ttlMs / 1000);
  const claims: Record<string, unknown> = { roles: [...grant.roles] };
  if (grant.phoneNumber) claims.phone_number = grant.phoneNumber;
  const token = await new SignJWT(claims)
    .setProtectedHeader({ alg: SIGNING_ALGORITHM, typ: ACCESS_TOKEN_TYPE, kid })
    .setIssuer(issuer.issuer)
    .setAudience(issuer.audience)
    .setSubject(grant.subject)
    .setJti(tokenId)
    .setIssuedAt(iat)
    .setExpirationTime(exp)
    .sign(privateKey);
  return { token, tokenId, issuedAt: new Date(issuedMs), expiresAt: new Date(exp * 1000) };
}

/** 256 random bits, base64url without padding: 43 characters. */
const REFRESH_TOKEN = /^[A-Za-z0-9_-]{43}$/;

export function newRefreshToken(): { token: string; hash: Buffer } {
  const token = randomBytes(32).toString("base64url");
  return { token, hash: hashRefreshToken(token)! };
}

/**
 * What the database keys refresh tokens by. SHA-256 suffices (no salt, no stretching):
 * the token has 256 bits of entropy, so there is nothing to brute-force.
 * Undefined for something that cannot be a refresh token.
 */
export function hashRefreshToken(token: string): Buffer | undefined {
  if (!REFRESH_TOKEN.test(token)) return undefined;
  return createHash("sha256").update(token).digest();
}
