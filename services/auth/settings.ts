// Auth's own settings, from the environment like the shared Config. Defaults are right for
// a developer machine; production must set the secrets (start-up refuses the dev ones
// when NODE_ENV=production). Every variable is listed in the README section "Auth".
import { MAX_ACCESS_TOKEN_TTL_MS } from "../kit/revocation.js";

type Env = Record<string, string | undefined>;

/** A GCRA limit: `burst` at once, refilled at `perHour`. */
export interface Throttle {
  burst: number;
  perHour: number;
}

export interface AdminBootstrap {
  username: string;
  email: string;
  phoneNumber: string;
  fullName: string;
  password: string;
}

export interface AuthSettings {
  accessTokenTtlMs: number;
  serviceTokenTtlMs: number;
  /** A session (refresh-token family) ends when unused this long… */
  sessionIdleTtlMs: number;
  /** …and in any case this long after its login. */
  sessionAbsoluteTtlMs: number;
  throttle: {
    /** Login attempts per normalised identifier, whether the account exists or not. */
    loginPerIdentifier: Throttle;
    /** Login attempts per client address. */
    loginPerIp: Throttle;
    /** Registrations per client address. */
    registerPerIp: Throttle;
    /** Service-token requests per client id. */
    serviceTokenPerClient: Throttle;
  };
  /** client id → secret for IssueServiceToken. */
  serviceClients: Map<string, string>;
  /** Encrypts signing keys at rest (AES-256-GCM under SHA-256 of this secret). */
  keyEncryptionSecret: string;
  admin: AdminBootstrap | undefined;
}

export const DEV_SERVICE_CLIENTS = ["promotion", "voucher", "provider", "edge"].map((id) => `${id}=dev-${id}-client-secret`).join(",");
const DEV_KEY_ENCRYPTION_SECRET = "dev-only-signing-key-encryption-secret";

function seconds(env: Env, name: string, fallbackSeconds: number, max?: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallbackSeconds * 1000;
  const value = Number(raw);
  if (!(Number.isFinite(value) && value > 0)) throw new Error(`${name} must be a positive number of seconds, got "${raw}"`);
  if (max !== undefined && value * 1000 > max) throw new Error(`${name} must be at most ${max / 1000} seconds, got ${raw}`);
  return value * 1000;
}

function throttle(env: Env, name: string, fallback: Throttle): Throttle {
  const positive = (key: string, dflt: number) => {
    const raw = env[key];
    if (raw === undefined || raw === "") return dflt;
    const value = Number(raw);
    if (!(Number.isFinite(value) && value > 0)) throw new Error(`${key} must be a positive number, got "${raw}"`);
    return value;
  };
  return { burst: Math.max(1, Math.floor(positive(`${name}_BURST`, fallback.burst))), perHour: positive(`${name}_PER_HOUR`, fallback.perHour) };
}

/** `id=secret,id=secret`. */
export function parseServiceClients(raw: string): Map<string, string> {
  const clients = new Map<string, string>();
  for (const entry of raw.split(",").map((e) => e.trim()).filter(Boolean)) {
    const eq = entry.indexOf("=");
    const id = entry.slice(0, eq).trim();
    const secret = entry.slice(eq + 1).trim();
    if (eq < 1 || !/^[a-z][a-z0-9_-]{0,63}$/.test(id) || secret.length < 16) {
      throw new Error(`AUTH_SERVICE_CLIENTS: "${id || entry}" must be <client id>=<secret of at least 16 characters>`);
    }
    clients.set(id, secret);
  }
  return clients;
}

export function loadAuthSettings(env: Env = process.env): AuthSettings {
  const production = env.NODE_ENV === "production";
  if (production && !env.AUTH_SERVICE_CLIENTS) throw new Error("AUTH_SERVICE_CLIENTS must be set in production (the dev secrets are public)");
  if (production && !env.AUTH_KEY_ENCRYPTION_SECRET) throw new Error("AUTH_KEY_ENCRYPTION_SECRET must be set in production");
  const admin = env.AUTH_ADMIN_PASSWORD
    ? {
        username: env.AUTH_ADMIN_USERNAME || "admin",
        email: env.AUTH_ADMIN_EMAIL || "admin@vouch.local",
        phoneNumber: env.AUTH_ADMIN_PHONE || "+84900000000",
        fullName: env.AUTH_ADMIN_FULL_NAME || "Vouch Administrator",
        password: env.AUTH_ADMIN_PASSWORD,
      }
    : undefined;
  const settings: AuthSettings = {
    accessTokenTtlMs: seconds(env, "AUTH_ACCESS_TOKEN_TTL_SECONDS", 900, MAX_ACCESS_TOKEN_TTL_MS),
    serviceTokenTtlMs: seconds(env, "AUTH_SERVICE_TOKEN_TTL_SECONDS", 600, MAX_ACCESS_TOKEN_TTL_MS),
    sessionIdleTtlMs: seconds(env, "AUTH_SESSION_IDLE_TTL_SECONDS", 14 * 86_400),
    sessionAbsoluteTtlMs: seconds(env, "AUTH_SESSION_ABSOLUTE_TTL_SECONDS", 30 * 86_400),
    throttle: {
      loginPerIdentifier: throttle(env, "AUTH_LOGIN_IDENTIFIER", { burst: 10, perHour: 100 }),
      loginPerIp: throttle(env, "AUTH_LOGIN_IP", { burst: 100, perHour: 2_000 }),
      registerPerIp: throttle(env, "AUTH_REGISTER_IP", { burst: 20, perHour: 200 }),
      serviceTokenPerClient: throttle(env, "AUTH_SERVICE_TOKEN", { burst: 20, perHour: 600 }),
    },
    serviceClients: parseServiceClients(env.AUTH_SERVICE_CLIENTS || DEV_SERVICE_CLIENTS),
    keyEncryptionSecret: env.AUTH_KEY_ENCRYPTION_SECRET || DEV_KEY_ENCRYPTION_SECRET,
    admin,
  };
  if (settings.sessionIdleTtlMs > settings.sessionAbsoluteTtlMs) {
    throw new Error("AUTH_SESSION_IDLE_TTL_SECONDS must not exceed AUTH_SESSION_ABSOLUTE_TTL_SECONDS");
  }
  return settings;
}

export const usesDevSecrets = (s: AuthSettings) => s.keyEncryptionSecret === DEV_KEY_ENCRYPTION_SECRET;
