// Headers on every answer of the edge. The console is a same-origin single-page app: its
// scripts, styles and rpcs all come from the edge itself, QR codes are data: URLs, and it is
// never meant to be framed, so the policy can be strict.
import type { NodeResponse } from "../kit/server.js";

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const HEADERS: Record<string, string> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
  "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
};

export function setSecurityHeaders(res: NodeResponse) {
  for (const [name, value] of Object.entries(HEADERS)) res.setHeader(name, value);
}
