// Verifies access tokens locally in every service and applies the per-rpc access policy
// declared in the contract (`option (vouch.options.v1.access)`), before any handler runs.
import type { Interceptor } from "@connectrpc/connect";
import { getOption, type DescMethod } from "@bufbuild/protobuf";
import {
  decodeProtectedHeader,
  errors as joseErrors,
  jwtVerify,
  type FlattenedJWSInput,
  type CompactJWSHeaderParameters,
  type JWTVerifyGetKey,
} from "jose";
import { access, Access } from "../../gen/vouch/options/v1/options_pb.js";
import { callerKey, type Caller } from "./context.js";
import { Code, VouchError, permissionDenied, unauthenticated } from "./errors.js";
import { remoteKeys, type RemoteKeysOptions } from "./jwks.js";

/** Asymmetric algorithms only; pinned so that `alg: none` or HS256-with-the-public-key can never verify. */
export const ACCESS_TOKEN_ALGORITHMS = ["EdDSA"];
export const ACCESS_TOKEN_TYPE = "at+jwt";

export interface TokenVerifierOptions {
  issuer: string;
  audience: string;
  /** Where to get auth's public keys: its JWKS URL (see jwks.ts: cached, refetched on an unknown `kid`, kept through an auth outage) or a key getter. */
  keys: URL | JWTVerifyGetKey;
  /** How the JWKS URL is fetched. */
  jwks?: RemoteKeysOptions;
  /** Lets auth refuse tokens issued before a password change or logout-everywhere. */
  isRevoked?: (caller: Caller) => Promise<boolean>;
  /** Verified tokens remembered (default 10,000): a client sends the same token on every call. */
  cacheSize?: number;
}

export interface TokenVerifier {
  verify(token: string): Promise<Caller>;
}

// Headers that would let a token name its own key: never honoured.
const KEY_SELECTING_HEADERS = ["jku", "jwk", "x5u", "x5c"] as const;

export function createTokenVerifier(opts: TokenVerifierOptions): TokenVerifier {
  const keys = opts.keys instanceof URL ? remoteKeys(opts.keys, opts.jwks) : opts.keys;
  // The signature check is the costly part of a call's authentication, and it can only
  // come out the same for the same token string and key: remember the claims of verified
  // tokens until they expire. Expiry and revocation are still checked on every call, and so
  // is the key (a map look-up, no signature): a token whose key was retired early (say,
  // compromised) is refused as soon as this process's key set no longer has it.
  const cacheSize = opts.cacheSize ?? 10_000;
  const verified = new Map<string, { caller: Caller; header: CompactJWSHeaderParameters; jws: FlattenedJWSInput }>();
  const keyStillKnown = async (header: CompactJWSHeaderParameters, jws: FlattenedJWSInput) => {
    try {
      await keys(header, jws);
      return true;
    } catch {
      return false; // and the full check says why: TOKEN_INVALID, or UNAVAILABLE in a JWKS outage
    }
  };
  const revoked = async (caller: Caller) => {
    if (opts.isRevoked && (await opts.isRevoked(caller))) throw unauthenticated("TOKEN_REVOKED", "access token has been revoked");
    return caller;
  };
  return {
    async verify(token) {
      const known = verified.get(token);
      if (known) {
        if (known.caller.expiresAt.getTime() > Date.now() && (await keyStillKnown(known.header, known.jws))) return revoked(known.caller);
        verified.delete(token); // and verify again below, which says why not
      }
      let header;
      try {
        header = decodeProtectedHeader(token);
      } catch {
        throw unauthenticated("TOKEN_INVALID", "access token is malformed");
      }
      if (KEY_SELECTING_HEADERS.some((h) => h in header)) {
        throw unauthenticated("TOKEN_INVALID", "access token names its own key");
      }
      if (!header.kid) throw unauthenticated("TOKEN_INVALID", "access token has no key id");
      try {
        const { payload, protectedHeader: verifiedHeader } = await jwtVerify(token, keys, {
          issuer: opts.issuer,
          audience: opts.audience,
          algorithms: ACCESS_TOKEN_ALGORITHMS,
          typ: ACCESS_TOKEN_TYPE,
          requiredClaims: ["exp", "iat", "sub", "jti"],
        });
        const caller: Caller = {
          subject: String(payload.sub),
          roles: Array.isArray(payload.roles) ? payload.roles.map(String) : [],
          tokenId: String(payload.jti),
          phoneNumber: typeof payload.phone_number === "string" ? payload.phone_number : undefined,
          issuedAt: new Date(Number(payload.iat) * 1000),
          expiresAt: new Date(Number(payload.exp) * 1000),
        };
        if (cacheSize > 0) {
          if (verified.size >= cacheSize) verified.delete(verified.keys().next().value as string);
          const [encodedHeader, encodedPayload, signature] = token.split(".");
          verified.set(token, { caller, header: verifiedHeader, jws: { protected: encodedHeader, payload: encodedPayload, signature } });
        }
        return await revoked(caller);
      } catch (err) {
        if (err instanceof joseErrors.JWTExpired) throw unauthenticated("TOKEN_EXPIRED", "access token has expired");
        if (err instanceof joseErrors.JOSEError) throw unauthenticated("TOKEN_INVALID", "access token is not valid");
        throw err;
      }
    },
  };
}

// Reading an option decodes it from the descriptor's options each time (a few µs, on every
// rpc, twice at the edge); descriptors never change, so each method's answer is kept.
const declaredAccess = new WeakMap<DescMethod, Access>();

/** The access policy an rpc declares; undeclared means "authenticated", the safe default. */
export function accessOf(method: DescMethod): Access {
  let policy = declaredAccess.get(method);
  if (policy === undefined) {
    const declared = getOption(method, access);
    policy = declared === Access.UNSPECIFIED ? Access.AUTHENTICATED : declared;
    declaredAccess.set(method, policy);
  }
  return policy;
}

/** The caller a bearer token stands for; throws UNAUTHENTICATED for a malformed header or a bad token. */
async function callerOf(verifier: TokenVerifier, authorization: string): Promise<Caller> {
  const match = /^Bearer ([A-Za-z0-9_\-.]+)$/.exec(authorization);
  if (!match) throw unauthenticated("TOKEN_INVALID", "authorization header must be 'Bearer <token>'");
  return verifier.verify(match[1]);
}

/**
 * Enforces each rpc's declared policy. Services outside `vouch.` (health, reflection) are
 * infrastructure and public. A token that is present is verified, even on a public rpc, so
 * handlers may personalise answers; but on a public rpc a token that does not verify
 * (expired, revoked, malformed) makes the call anonymous instead of failing it: a client
 * holding a stale token must still be able to log in, refresh or read public data.
 */
export function authInterceptor(verifier: TokenVerifier): Interceptor {
  return (next) => async (req) => {
    const infrastructure = !req.service.typeName.startsWith("vouch.");
    const policy = infrastructure ? Access.PUBLIC : accessOf(req.method);
    const authorization = req.header.get("authorization");
    if (authorization) {
      try {
        req.contextValues.set(callerKey, await callerOf(verifier, authorization));
      } catch (err) {
        const rejected = err instanceof VouchError && err.code === Code.Unauthenticated;
        if (policy !== Access.PUBLIC || !rejected) throw err;
      }
    } else if (policy !== Access.PUBLIC) {
      throw unauthenticated("TOKEN_MISSING", "this rpc requires an access token");
    }
    const caller = req.contextValues.get(callerKey);
    // Services act on behalf of admins (promotion creating the book behind a campaign),
    // so a service token passes where an admin token does.
    if (policy === Access.ADMIN && !caller?.roles.some((r) => r === "ADMIN" || r === "SERVICE")) {
      throw permissionDenied("ADMIN_REQUIRED", "this rpc requires the ADMIN role");
    }
    if (policy === Access.SERVICE && !caller?.roles.includes("SERVICE")) {
      throw permissionDenied("SERVICE_REQUIRED", "this rpc is for Vouch services only");
    }
    return next(req);
  };
}
