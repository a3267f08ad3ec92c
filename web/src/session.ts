// The signed-in person: tokens kept in sessionStorage (gone with the tab; the edge's strict
// CSP is what keeps scripts of others away from it), the access token refreshed silently a
// minute before it expires and whenever a call finds it expired. One refresh at a time:
// refresh tokens rotate, and a second use of a rotated one would end the whole session.
// Only auth refusing the refresh token ends the session; a failed refresh for any other
// reason (offline, rate limited, auth down) keeps it and is tried again.
import { create } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AuthService, Role, UserSchema, type User } from "../../gen/vouch/auth/v1/auth_pb.js";
import { fromJson, toJson } from "@bufbuild/protobuf";
import { EDGE_URL } from "./env.js";

export interface Session {
  accessToken: string;
  accessExpiresAt: number;
  refreshToken: string;
  user: User;
  firstLogin: boolean;
}

const KEY = "vouch.session";
const REFRESH_BEFORE_MS = 60_000;
/** After a refresh that failed without ending the session, unless the error says how long to wait. */
const REFRESH_RETRY_MS = 5_000;
// Login, refresh and logout need no token: a transport without the session interceptor.
const auth = createClient(AuthService, createConnectTransport({ baseUrl: EDGE_URL }));

type Listener = (s: Session | undefined) => void;
const listeners = new Set<Listener>();
let current: Session | undefined = load();
let refreshing: Promise<Session | undefined> | undefined;
let timer: ReturnType<typeof setTimeout> | undefined;

function load(): Session | undefined {
  try {
    const raw = sessionStorage.getItem(KEY);
    if (!raw) return undefined;
    const saved = JSON.parse(raw) as Omit<Session, "user"> & { user: unknown };
    return { ...saved, user: fromJson(UserSchema, saved.user as never) };
  } catch {
    return undefined;
  }
}

function save(s: Session | undefined) {
  current = s;
  if (s) sessionStorage.setItem(KEY, JSON.stringify({ ...s, user: toJson(UserSchema, s.user) }));
  else sessionStorage.removeItem(KEY);
  schedule();
  for (const l of listeners) l(s);
}

function schedule(atLeastMs = 1_000) {
  if (timer) clearTimeout(timer);
  timer = undefined;
  if (!current) return;
  const wait = Math.max(atLeastMs, current.accessExpiresAt - REFRESH_BEFORE_MS - Date.now());
  timer = setTimeout(() => void refresh().catch(() => {}), wait);
}

const ms = (t: Timestamp | undefined) => (t ? timestampDate(t).getTime() : Date.now() + 5 * 60_000);

export const session = {
  get: () => current,
  subscribe(l: Listener) {
    listeners.add(l);
    return () => void listeners.delete(l);
  },
  isAdmin: (s: Session | undefined) => !!s?.user.roles.includes(Role.ADMIN),

  async login(identifier: string, password: string): Promise<Session> {
    const res = await auth.login({ identifier, password });
    const s: Session = {
      accessToken: res.accessToken,
      accessExpiresAt: ms(res.accessTokenExpireTime),
      refreshToken: res.refreshToken,
      user: res.user ?? create(UserSchema),
      firstLogin: res.firstLogin,
    };
    save(s);
    return s;
  },

  async logout() {
    const s = current;
    save(undefined);
    // Ends the session on the server too; if that fails the refresh token still expires.
    if (s) await auth.logout({ refreshToken: s.refreshToken }).catch(() => {});
  },

  /** A token valid for at least a little while, refreshing first when it is about to expire. */
  async accessToken(): Promise<string | undefined> {
    if (!current) return undefined;
    if (current.accessExpiresAt - Date.now() > 30_000) return current.accessToken;
    return (await refresh())?.accessToken;
  },

  refresh,
};

function refresh(): Promise<Session | undefined> {
  refreshing ??= (async () => {
    const s = current;
    if (!s) return undefined;
    try {
      const res = await auth.refreshToken({ refreshToken: s.refreshToken });
      const next = { ...s, accessToken: res.accessToken, accessExpiresAt: ms(res.accessTokenExpireTime), refreshToken: res.refreshToken };
      save(next);
      return next;
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code === Code.Unauthenticated) {
        save(undefined); // the refresh token was refused (expired, revoked, reused): sign in again
      } else {
        const retry = ce.findDetails(RetryInfoSchema)[0]?.retryDelay;
        schedule(retry ? Number(retry.seconds) * 1_000 + retry.nanos / 1e6 : REFRESH_RETRY_MS);
      }
      throw err; // the caller shows it
    } finally {
      refreshing = undefined;
    }
  })();
  return refreshing;
}

schedule();
