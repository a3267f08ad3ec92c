// `/.well-known/jwks.json` on the edge: auth's public keys, for browsers and outside
// verifiers that only see the edge. Fetched from auth and reused briefly; auth publishes a
// key before signing with it, so a short cache never hides a key in use. When auth cannot
// be reached the last good copy is served (keys change rarely), else 503.
import { sendHttp, type HttpRoute } from "../kit/server.js";
import type { Logger } from "../kit/log.js";

export function jwksRoute(opts: { authUrl: string; cacheMs: number; log: Logger; timeoutMs?: number }): HttpRoute {
  const url = `${opts.authUrl}/.well-known/jwks.json`;
  let cached: { body: string; at: number } | undefined;
  let pending: Promise<string> | undefined;

  async function fetchKeys(): Promise<string> {
    const res = await fetch(url, { signal: AbortSignal.timeout(opts.timeoutMs ?? 3_000) });
    if (!res.ok) throw new Error(`auth answered ${res.status} for ${url}`);
    const body = await res.text();
    const parsed = JSON.parse(body) as { keys?: unknown };
    if (!Array.isArray(parsed.keys)) throw new Error("auth's JWKS has no keys array");
    cached = { body, at: Date.now() };
    return body;
  }

  return {
    method: "GET",
    path: "/.well-known/jwks.json",
    async handle(_req, res) {
      let body = cached && Date.now() - cached.at < opts.cacheMs ? cached.body : undefined;
      if (!body) {
        try {
          pending ??= fetchKeys().finally(() => (pending = undefined));
          body = await pending;
        } catch (err) {
          opts.log.warn({ err }, "cannot fetch the JWKS from auth");
          body = cached?.body;
        }
      }
      if (!body) {
        sendHttp(res, 503, "text/plain; charset=utf-8", "signing keys are unavailable; try again shortly\n", { "retry-after": "1" });
        return;
      }
      sendHttp(res, 200, "application/jwk-set+json", body, { "cache-control": `public, max-age=${Math.floor(opts.cacheMs / 1000)}` });
    },
  };
}
