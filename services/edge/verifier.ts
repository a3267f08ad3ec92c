// The edge's token verifier: the kit's (same keys, algorithms, claims, revocation), with the
// signature check remembered per token. A browser sends the same access token on every call
// for up to 15 minutes, and the service behind the edge verifies it again anyway, so the edge
// need not pay an Ed25519 verification per call. What can change during a token's life is
// still checked every call: expiry (against the cached `exp`) and revocation (one Redis GET).
import { createTokenVerifier, type TokenVerifier } from "../kit/auth.js";
import type { Config } from "../kit/config.js";
import type { Caller } from "../kit/context.js";
import { unauthenticated } from "../kit/errors.js";

/** Bounds memory: ~1 KB per entry. Past it the oldest entries go (they are re-verified if seen again). */
const MAX_CACHED_TOKENS = 20_000;

export function createEdgeVerifier(config: Config, isRevoked: (caller: Caller) => Promise<boolean>, signatures?: TokenVerifier): TokenVerifier {
  const inner =
    signatures ??
    createTokenVerifier({
      issuer: config.jwt.issuer,
      audience: config.jwt.audience,
      keys: new URL(config.jwt.jwksUrl ?? `${config.peers.auth}/.well-known/jwks.json`),
    });
  const verified = new Map<string, Caller>();
  return {
    async verify(token) {
      let caller = verified.get(token);
      if (!caller) {
        caller = await inner.verify(token); // throws UNAUTHENTICATED for anything wrong
        if (verified.size >= MAX_CACHED_TOKENS) verified.delete(verified.keys().next().value as string);
        verified.set(token, caller);
      } else if (caller.expiresAt.getTime() <= Date.now()) {
        verified.delete(token);
        throw unauthenticated("TOKEN_EXPIRED", "access token has expired");
      }
      if (await isRevoked(caller)) throw unauthenticated("TOKEN_REVOKED", "access token has been revoked");
      return caller;
    },
  };
}
