// Configuration comes only from the environment, with defaults that work on a fresh
// developer machine (local Postgres, Redis and NATS on their standard ports).

export type ServiceName = "auth" | "promotion" | "voucher" | "provider" | "edge" | "provider-sim";

export const DEFAULT_PORTS: Record<ServiceName, number> = {
  auth: 50051,
  promotion: 50052,
  voucher: 50053,
  provider: 50054,
  edge: 8080,
  "provider-sim": 8090,
};

export interface Config {
  service: ServiceName;
  host: string;
  port: number;
  databaseUrl: string;
  /** Postgres schema this service owns; every table lives in it. */
  dbSchema: string;
  redisUrl: string;
  /** Prefix for every Redis key, so test runs and environments never collide. */
  redisKeyPrefix: string;
  natsUrl: string;
  /** JetStream stream holding every platform event. */
  natsStream: string;
  /** First token of every event subject (`vouch` → `vouch.auth.user_logged_in`). */
  natsSubjectPrefix: string;
  logLevel: string;
  jwt: {
    issuer: string;
    audience: string;
    /** Where verifiers fetch auth's public keys; unset means "ask auth over gRPC". */
    jwksUrl: string | undefined;
  };
  /** Base URL of every peer service, for gRPC clients. */
  peers: Record<"auth" | "promotion" | "voucher" | "provider", string>;
  /** Grace period for in-flight calls on SIGTERM before connections are cut. */
  shutdownGraceMs: number;
  /**
   * HTTP/2 connections are closed gracefully (GOAWAY: calls in flight and streams finish)
   * after about this long, so gRPC clients resolve the service's name again and spread
   * over replicas added since (0: never).
   */
  maxConnectionAgeMs: number;
  /** Connections in the service's Postgres pool (consumers may open their own). */
  databasePoolSize?: number;
  /**
   * Take the client address from `x-forwarded-for` (its first entry) instead of the socket
   * peer: only for processes reachable solely through our own edge, which sets it.
   */
  trustForwardedFor?: boolean;
}

type Env = Record<string, string | undefined>;

function int(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`environment variable ${name} must be a non-negative integer, got "${raw}"`);
  }
  return value;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (raw === "true" || raw === "1") return true;
  if (raw === "false" || raw === "0") return false;
  throw new Error(`environment variable ${name} must be true or false, got "${raw}"`);
}

function peerUrl(env: Env, name: "auth" | "promotion" | "voucher" | "provider"): string {
  const key = `${name.toUpperCase()}_URL`;
  return env[key] ?? `http://127.0.0.1:${DEFAULT_PORTS[name]}`;
}

export function loadConfig(service: ServiceName, env: Env = process.env): Config {
  const portVar = `${service.toUpperCase().replace("-", "_")}_PORT`;
  return {
    service,
    host: env.HOST ?? "127.0.0.1",
    port: int(env, portVar, int(env, "PORT", DEFAULT_PORTS[service])),
    databaseUrl: env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/vouch",
    dbSchema: env.DB_SCHEMA ?? service.replace("-", "_"),
    redisUrl: env.REDIS_URL ?? "redis://127.0.0.1:6379",
    redisKeyPrefix: env.REDIS_KEY_PREFIX ?? "vouch:",
    natsUrl: env.NATS_URL ?? "nats://127.0.0.1:4222",
    natsStream: env.NATS_STREAM ?? "VOUCH",
    natsSubjectPrefix: env.NATS_SUBJECT_PREFIX ?? "vouch",
    logLevel: env.LOG_LEVEL ?? "info",
    jwt: {
      issuer: env.JWT_ISSUER ?? "https://auth.vouch.local",
      audience: env.JWT_AUDIENCE ?? "vouch",
      jwksUrl: env.JWKS_URL || undefined,
    },
    peers: {
      auth: peerUrl(env, "auth"),
      promotion: peerUrl(env, "promotion"),
      voucher: peerUrl(env, "voucher"),
      provider: peerUrl(env, "provider"),
    },
    shutdownGraceMs: int(env, "SHUTDOWN_GRACE_MS", 10_000),
    maxConnectionAgeMs: int(env, "MAX_CONNECTION_AGE_MS", 300_000),
    databasePoolSize: Math.max(1, int(env, "DATABASE_POOL_SIZE", 10)),
    trustForwardedFor: bool(env, "TRUST_FORWARDED_FOR", false),
  };
}
