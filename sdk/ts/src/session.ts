// The session: one user's access and refresh tokens, and the interceptor that spends them.
//
// - Attaches `Authorization: Bearer <access token>` to every rpc whose contract does not
//   declare it ACCESS_PUBLIC (read from the `vouch.options.v1.access` method option).
// - Refreshes the access token with the refresh token shortly before it expires, and once
//   more when a call still comes back UNAUTHENTICATED (a revoked or rotated-out key), then
//   retries that call once. Requests that stream from the client are not retried.
// - Single flight: however many calls need a fresh token at once, one RefreshToken call is
//   made and all of them wait for it. This matters: auth rotates the refresh token on each
//   use and treats a second use of an old one as theft, ending the whole session.
// - Picks up the tokens of any auth response that carries a new pair (Login,
//   ChangePassword, RefreshToken), and forgets them after Logout.
import { getOption } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { Access, access } from "../../../gen/vouch/options/v1/options_pb.js";

export interface Tokens {
  accessToken: string;
  /** When the access token expires; unknown means "only refresh on UNAUTHENTICATED". */
  accessTokenExpiresAt?: Date;
  refreshToken: string;
}

export interface SessionOptions {
  /** Tokens saved from an earlier run (see `onTokens`). */
  tokens?: Tokens;
  /** Refresh this long before the access token expires (default 60 s). */
  refreshBeforeMs?: number;
  /** Called with every new pair (login, refresh, password change): persist them here. */
  onTokens?: (tokens: Tokens) => void;
  /** Called when the session ends: logout, or a refresh refused (expired, revoked, reused). */
  onSessionEnded?: (reason: "logout" | "refresh_refused") => void;
  /** Clock, for tests. */
  now?: () => number;
}

export interface Session {
  /** The current tokens, or undefined when signed out. */
  tokens(): Tokens | undefined;
  /** Replaces the tokens (e.g. restored from storage). */
  set(tokens: Tokens): void;
  /** Forgets the tokens locally (the server session stays; see logout). */
  clear(): void;
  /** A valid access token, refreshed first if it is about to expire (for streams and non-rpc calls). */
  accessToken(): Promise<string>;
  /** Ends the session on the server (Logout) and forgets it here. */
  logout(): Promise<void>;
  /** Attaches and refreshes tokens; add it to every transport that talks to Vouch. */
  interceptor: Interceptor;
  /** Wires the auth client used for refreshes (a transport *without* this interceptor). */
  connect(authTransport: Transport): void;
}

interface TokenBearing {
  accessToken?: unknown;
  accessTokenExpireTime?: Timestamp;
  refreshToken?: unknown;
}

export function createSession(opts: SessionOptions = {}): Session {
  const refreshBeforeMs = opts.refreshBeforeMs ?? 60_000;
  const now = opts.now ?? Date.now;
  let current: Tokens | undefined = opts.tokens;
  let auth: Client<typeof AuthService> | undefined;
  let refreshing: Promise<Tokens> | undefined;

  const store = (tokens: Tokens) => {
    current = tokens;
    opts.onTokens?.(tokens);
  };
  const end = (reason: "logout" | "refresh_refused") => {
    current = undefined;
    opts.onSessionEnded?.(reason);
  };
  const fromResponse = (m: TokenBearing): Tokens | undefined =>
    typeof m.accessToken === "string" && m.accessToken && typeof m.refreshToken === "string" && m.refreshToken
      ? { accessToken: m.accessToken, refreshToken: m.refreshToken, accessTokenExpiresAt: m.accessTokenExpireTime ? timestampDate(m.accessTokenExpireTime) : undefined }
      : undefined;
  const expiresSoon = (t: Tokens) => t.accessTokenExpiresAt !== undefined && t.accessTokenExpiresAt.getTime() - refreshBeforeMs <= now();

  /** One refresh at a time; `stale` is the access token the caller found wanting. */
  function refresh(stale: string | undefined): Promise<Tokens> {
    if (current && stale !== undefined && current.accessToken !== stale) return Promise.resolve(current); // someone already refreshed
    if (refreshing) return refreshing;
    const from = current;
    if (!from) return Promise.reject(new ConnectError("not signed in", Code.Unauthenticated));
    if (!auth) return Promise.reject(new Error("session is not connected to auth (call connect())"));
    const client = auth;
    refreshing = (async () => {
      try {
        const res = await client.refreshToken({ refreshToken: from.refreshToken });
        const tokens = fromResponse(res);
        if (!tokens) throw new ConnectError("RefreshToken answered without tokens", Code.Internal);
        if (current === from) store(tokens);
        return tokens;
      } catch (err) {
        // Refused for good (expired, revoked, reused): the session is over. Anything else
        // (network, UNAVAILABLE) keeps the tokens for the next attempt.
        const e = ConnectError.from(err);
        if ((e.code === Code.Unauthenticated || e.code === Code.PermissionDenied) && current === from) end("refresh_refused");
        throw err;
      } finally {
        refreshing = undefined;
      }
    })();
    return refreshing;
  }

  async function accessToken(): Promise<string> {
    if (!current) throw new ConnectError("not signed in", Code.Unauthenticated);
    if (expiresSoon(current)) return (await refresh(current.accessToken)).accessToken;
    return current.accessToken;
  }

  const interceptor: Interceptor = (next) => async (req) => {
    const isAuth = req.service.typeName === AuthService.typeName;
    const isPublic = getOption(req.method, access) === Access.PUBLIC;
    let sent: string | undefined;
    if (!isPublic && current) {
      sent = await accessToken();
      req.header.set("Authorization", `Bearer ${sent}`);
    }
    let res;
    try {
      res = await next(req);
    } catch (err) {
      const retryable = !isPublic && sent !== undefined && !req.stream && ConnectError.from(err).code === Code.Unauthenticated;
      if (!retryable) throw err;
      let fresh: Tokens;
      try {
        fresh = await refresh(sent);
      } catch {
        throw err; // the caller learns why its own call failed
      }
      req.header.set("Authorization", `Bearer ${fresh.accessToken}`);
      res = await next(req);
    }
    if (isAuth && !res.stream) {
      if (req.method.name === "Logout") {
        if (current && (req.message as { refreshToken?: string }).refreshToken === current.refreshToken) end("logout");
      } else {
        const tokens = fromResponse(res.message as TokenBearing);
        if (tokens) store(tokens);
      }
    }
    return res;
  };

  return {
    tokens: () => current,
    set: store,
    clear: () => {
      current = undefined;
    },
    accessToken,
    async logout() {
      const t = current;
      if (!t) return;
      try {
        await auth?.logout({ refreshToken: t.refreshToken });
      } finally {
        if (current === t) end("logout");
      }
    },
    interceptor,
    connect(authTransport) {
      auth = createClient(AuthService, authTransport);
    },
  };
}
