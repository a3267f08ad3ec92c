// Auth's public keys as every other service fetches them: jose's remote JWKS (cached,
// refetched on an unknown `kid` and when older than `maxAgeMs`), made to survive an auth
// outage. Keys do not stop being valid because auth is down, so while the JWKS cannot be
// fetched the last key set that was fetched keeps verifying tokens; a token whose key is
// not in it (or when none was ever fetched) fails UNAVAILABLE — retryable, not the
// client's fault — instead of UNAUTHENTICATED or a bare INTERNAL.
import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, type JWTVerifyGetKey } from "jose";
import { unavailable } from "./errors.js";

export interface RemoteKeysOptions {
  /** Refetch a key set older than this even when every `kid` is known (default 10 min). */
  maxAgeMs?: number;
  /** One fetch may take this long (default 3 s). */
  timeoutMs?: number;
}

/** The fetch itself failed (network, timeout, non-200, not a JWKS), as opposed to the token. */
function isFetchFailure(err: unknown): boolean {
  if (!(err instanceof joseErrors.JOSEError)) return true; // fetch's TypeError, socket errors
  return err instanceof joseErrors.JWKSTimeout || err instanceof joseErrors.JWKSInvalid || err.code === "ERR_JOSE_GENERIC";
}

export function remoteKeys(url: URL, opts: RemoteKeysOptions = {}): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(url, { cooldownDuration: 5_000, cacheMaxAge: opts.maxAgeMs ?? 10 * 60_000, timeoutDuration: opts.timeoutMs ?? 3_000 });
  let lastFetched: { jwks: object; keys: JWTVerifyGetKey } | undefined;
  const outage = () => unavailable("JWKS_UNAVAILABLE", "the signing keys of auth cannot be fetched right now", 1_000);

  return async (header, token) => {
    try {
      const key = await remote(header, token);
      const jwks = remote.jwks();
      if (jwks && jwks !== lastFetched?.jwks) lastFetched = { jwks, keys: createLocalJWKSet(jwks) };
      return key;
    } catch (err) {
      if (!isFetchFailure(err)) throw err;
      if (!lastFetched) throw outage();
      try {
        return await lastFetched.keys(header, token);
      } catch (fallbackErr) {
        // A key rotated in during the outage: only auth could tell, and it is not answering.
        if (fallbackErr instanceof joseErrors.JWKSNoMatchingKey) throw outage();
        throw fallbackErr;
      }
    }
  };
}
