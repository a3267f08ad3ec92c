// Which browser pages may call the edge. Connect and gRPC-Web calls from another origin
// are preceded by a preflight (their content types and headers are not "simple"); the
// answer names the exact origin (never `*`, since calls carry an Authorization header) and
// the headers both protocols need, and exposes the gRPC status headers a gRPC-Web client reads.
import { cors as connectCors } from "@connectrpc/connect";
import type { NodeRequest, NodeResponse } from "../kit/server.js";
import { REQUEST_ID_HEADER } from "../kit/interceptors.js";

const ALLOW_METHODS = connectCors.allowedMethods.join(", ");
const ALLOW_HEADERS = [...connectCors.allowedHeaders, "Authorization", REQUEST_ID_HEADER].join(", ");
const EXPOSE_HEADERS = [...connectCors.exposedHeaders, REQUEST_ID_HEADER].join(", ");
/** Browsers cap this anyway (Chromium: 2 h); it spares a preflight per call. */
const PREFLIGHT_MAX_AGE_S = 7200;

export type CorsOutcome = "not-cors" | "same-origin" | "allowed" | "answered" | "refused";

export interface CorsPolicy {
  /**
   * Adds the CORS headers a response needs, answers preflights, and refuses calls from
   * origins not on the list (403, with no CORS headers, so the page learns nothing).
   * When the outcome is "answered" or "refused" the response is finished.
   */
  apply(req: NodeRequest, res: NodeResponse): CorsOutcome;
}

function hostOf(req: NodeRequest): string | undefined {
  const host = req.headers.host ?? req.headers[":authority"];
  return Array.isArray(host) ? host[0] : host;
}

export function createCorsPolicy(allowedOrigins: readonly string[]): CorsPolicy {
  const allowed = new Set(allowedOrigins);
  return {
    apply(req, res) {
      const origin = req.headers.origin;
      // No Origin: not a browser's cross-origin call (curl, a server, a plain navigation).
      if (!origin) return "not-cors";
      let originHost: string | undefined;
      try {
        originHost = new URL(origin).host;
      } catch {
        originHost = undefined; // "null" (sandboxed frames, file://) and garbage
      }
      // The console served by the edge itself: browsers send Origin on same-origin POSTs too.
      if (originHost !== undefined && originHost === hostOf(req)) return "same-origin";
      res.setHeader("vary", "Origin");
      if (!allowed.has(origin)) {
        res.writeHead(403, { "content-type": "text/plain; charset=utf-8" });
        res.end("origin not allowed\n");
        return "refused";
      }
      res.setHeader("access-control-allow-origin", origin);
      res.setHeader("access-control-expose-headers", EXPOSE_HEADERS);
      if (req.method === "OPTIONS") {
        res.writeHead(204, {
          "access-control-allow-methods": ALLOW_METHODS,
          "access-control-allow-headers": ALLOW_HEADERS,
          "access-control-max-age": String(PREFLIGHT_MAX_AGE_S),
        });
        res.end();
        return "answered";
      }
      return "allowed";
    },
  };
}
