// The edge's own settings, from the environment (the shared ones come from kit/config.ts).
import { resolve } from "node:path";
import type { RateLimit } from "../kit/ratelimit.js";

type Env = Record<string, string | undefined>;

export interface EdgeSettings {
  /**
   * Origins (scheme://host[:port]) whose pages may call the edge from a browser. The edge's
   * own origin (the console it serves) is always allowed.
   */
  corsOrigins: string[];
  /** Per client address, every rpc. Undefined: no limit (benchmarks). */
  perIpLimit: RateLimit | undefined;
  /** Per signed-in user, every rpc. Undefined: no limit. */
  perUserLimit: RateLimit | undefined;
  /**
   * Take the client address from the first `x-forwarded-for` entry instead of the socket
   * peer: only when a load balancer of ours is in front and overwrites that header.
   */
  trustForwardedFor: boolean;
  /** The console's static build (`npm run build` writes it). */
  staticDir: string;
  /** How long the JWKS fetched from auth is reused. Short: rotation publishes the next key ahead. */
  jwksCacheMs: number;
  /** Deadline for a forwarded call that has none of its own (server streams are exempt). */
  defaultTimeoutMs: number;
}

/** Relative to the working directory (the repository root for `npm start`, /app in the image), not to this file, which may be compiled elsewhere. */
export const DEFAULT_STATIC_DIR = resolve("web/dist");

function int(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`environment variable ${name} must be a non-negative integer, got "${raw}"`);
  return value;
}

/** `…_PER_MINUTE` = 0 turns the limit off. */
function limit(env: Env, prefix: string, perMinute: number, burst: number): RateLimit | undefined {
  const rate = int(env, `${prefix}_PER_MINUTE`, perMinute);
  if (rate === 0) return undefined;
  return { ratePerPeriod: rate, periodMs: 60_000, burst: Math.max(1, int(env, `${prefix}_BURST`, burst)) };
}

function origins(raw: string | undefined): string[] {
  if (!raw) return [];
  return raw.split(",").map((s) => s.trim()).filter(Boolean).map((origin) => {
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      throw new Error(`EDGE_CORS_ORIGINS: "${origin}" is not an origin like https://console.example.com`);
    }
    // An origin is exactly scheme://host[:port]; a path or a trailing slash would never match.
    if (url.origin !== origin) throw new Error(`EDGE_CORS_ORIGINS: "${origin}" must be written as "${url.origin}"`);
    return url.origin;
  });
}

export function loadEdgeSettings(env: Env = process.env): EdgeSettings {
  return {
    corsOrigins: origins(env.EDGE_CORS_ORIGINS ?? "http://localhost:5173,http://127.0.0.1:5173"),
    perIpLimit: limit(env, "EDGE_RATE_PER_IP", 1_200, 200),
    perUserLimit: limit(env, "EDGE_RATE_PER_USER", 600, 100),
    trustForwardedFor: env.EDGE_TRUST_FORWARDED_FOR === "true",
    staticDir: env.EDGE_STATIC_DIR ? resolve(env.EDGE_STATIC_DIR) : DEFAULT_STATIC_DIR,
    jwksCacheMs: int(env, "EDGE_JWKS_CACHE_MS", 30_000),
    defaultTimeoutMs: int(env, "EDGE_UPSTREAM_TIMEOUT_MS", 30_000),
  };
}
