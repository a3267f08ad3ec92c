// For other services: a SERVICE access token from auth (client credentials), cached and
// renewed before it expires, and an interceptor that sends it. Promotion uses it to call
// voucher's ACCESS_SERVICE rpcs (IssueVoucher):
//
//   const tokens = createServiceTokenSource({ authUrl: config.peers.auth, ...serviceCredentials("promotion") });
//   const voucher = createClient(VoucherService, createServiceTransport({ baseUrl: config.peers.voucher, interceptors: [tokens.interceptor] }));
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createServiceTransport } from "./grpc-transport.js";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { AuthService } from "../../gen/vouch/auth/v1/auth_pb.js";

type Env = Record<string, string | undefined>;

export interface ServiceCredentials {
  clientId: string;
  clientSecret: string;
}

/**
 * A service's own credentials: AUTH_CLIENT_ID (default: the service name) and
 * AUTH_CLIENT_SECRET (default: the dev secret auth accepts for that name, see
 * AUTH_SERVICE_CLIENTS). Production sets both.
 */
export function serviceCredentials(service: string, env: Env = process.env): ServiceCredentials {
  const clientId = env.AUTH_CLIENT_ID || service;
  return { clientId, clientSecret: env.AUTH_CLIENT_SECRET || `dev-${clientId}-client-secret` };
}

export interface ServiceTokenSource {
  /** A token valid for at least `renewBeforeMs` more. One request to auth at a time. */
  token(): Promise<string>;
  /** Adds `Authorization: Bearer <service token>` to every call of a client. */
  interceptor: Interceptor;
  /** Closes the channel to auth (on shutdown). */
  close(): void;
}

export function createServiceTokenSource(opts: ServiceCredentials & { authUrl: string; renewBeforeMs?: number }): ServiceTokenSource {
  const renewBeforeMs = opts.renewBeforeMs ?? 60_000;
  const authTransport = createServiceTransport({ baseUrl: opts.authUrl });
  const auth = createClient(AuthService, authTransport);
  let cached: { token: string; expiresAt: number } | undefined;
  let pending: Promise<string> | undefined;

  async function token(): Promise<string> {
    if (cached && cached.expiresAt - renewBeforeMs > Date.now()) return cached.token;
    pending ??= (async () => {
      try {
        const res = await auth.issueServiceToken({ clientId: opts.clientId, clientSecret: opts.clientSecret });
        const expiresAt = res.accessTokenExpireTime ? timestampDate(res.accessTokenExpireTime).getTime() : Date.now() + renewBeforeMs;
        cached = { token: res.accessToken, expiresAt };
        return res.accessToken;
      } finally {
        pending = undefined;
      }
    })();
    return pending;
  }

  return {
    token,
    interceptor: (next) => async (req) => {
      req.header.set("authorization", `Bearer ${await token()}`);
      return next(req);
    },
    close: () => authTransport.close(),
  };
}
