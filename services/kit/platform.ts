// What every service process needs before it can serve: config, logs, metrics, its
// Postgres schema (migrated), Redis, NATS with the event stream, the outbox relay, the
// token verifier and readiness checks. A service's main.ts asks for the parts it uses and
// wires its own stores and handlers by hand; `serve` then listens and owns shutdown.
import { sql, type Kysely } from "kysely";
import type { NatsConnection } from "nats";
import type { Config } from "./config.js";
import { createLogger, type Logger } from "./log.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { createDb, ensureDatabase } from "./db.js";
import { runMigrations, type Migration } from "./migrate.js";
import { createRedis, pingRedis, type Redis } from "./redis.js";
import { connectNats, ensureStream } from "./events/stream.js";
import { outboxMigration } from "./events/outbox.js";
import { idempotencyMigration, startRequestIdPruning, type RequestIdPruning } from "./idempotency.js";
import { startOutboxRelay } from "./events/relay.js";
import { createTokenVerifier, type TokenVerifier } from "./auth.js";
import { createRevocationCheck } from "./revocation.js";
import type { ReadinessCheck } from "./health.js";
import { flushTraces } from "./tracing.js";
import { createServiceServer, type RunningServer, type ServiceServerOptions } from "./server.js";

export interface PlatformOptions {
  /** The service's own migrations; the outbox/inbox tables are added when `events` is on. */
  migrations?: Record<string, Migration>;
  postgres?: boolean;
  redis?: boolean;
  /** Connect to NATS, ensure the stream, and relay this service's outbox. */
  events?: boolean;
  /** Auth verifies with its own key store instead of fetching its own JWKS over HTTP. */
  verifier?: TokenVerifier;
  /**
   * Request ids of retryable mutations (AIP-155, `kit/idempotency.ts`): adds the
   * `idempotency_keys` table (as migration "0000_idempotency") and prunes ids older than
   * `keepMs` every `everyMs`.
   */
  requestIds?: RequestIdPruning | boolean;
}

export interface Platform<DB> {
  config: Config;
  log: Logger;
  metrics: Metrics;
  db: Kysely<DB>;
  redis: Redis;
  nc: NatsConnection;
  verifier: TokenVerifier;
  readiness: ReadinessCheck[];
  /** Registers something to stop on shutdown; closers run in reverse order. */
  onClose(close: () => Promise<unknown> | unknown): void;
  close(): Promise<void>;
}

const missing = (what: string) =>
  new Proxy({}, { get: () => { throw new Error(`${what} was not requested from startPlatform`); } });

export async function startPlatform<DB>(config: Config, opts: PlatformOptions): Promise<Platform<DB>> {
  const log = createLogger(config.service, config.logLevel);
  const metrics = createMetrics(config.service);
  // Closers run in reverse: the spans of the shutdown itself are flushed last.
  const closers: (() => Promise<unknown> | unknown)[] = [flushTraces];
  const readiness: ReadinessCheck[] = [];
  const redis = opts.redis ? createRedis(config.redisUrl, { keyPrefix: config.redisKeyPrefix, log, name: config.service }) : undefined;
  if (redis) closers.push(() => redis.quit().catch(() => redis.disconnect()));
  // Tokens revoked by auth (password change, role revoked) are refused here too, checked on
  // the service's own Redis client when it has one, else on one the check opens on first
  // use (see revocation.ts).
  const revocation = opts.verifier
    ? undefined
    : createRevocationCheck({ redis: redis ?? { url: config.redisUrl, keyPrefix: config.redisKeyPrefix }, log, registry: metrics.registry });
  if (revocation) closers.push(() => revocation.close());
  const platform: Platform<DB> = {
    config,
    log,
    metrics,
    db: missing("postgres") as Kysely<DB>,
    redis: missing("redis") as Redis,
    nc: missing("events") as NatsConnection,
    verifier:
      opts.verifier ??
      createTokenVerifier({
        issuer: config.jwt.issuer,
        audience: config.jwt.audience,
        keys: new URL(config.jwt.jwksUrl ?? `${config.peers.auth}/.well-known/jwks.json`),
        isRevoked: revocation?.isRevoked,
      }),
    readiness,
    onClose: (close) => void closers.push(close),
    close: async () => {
      for (const close of closers.reverse()) {
        try {
          await close();
        } catch (err) {
          log.warn({ err }, "error while closing");
        }
      }
    },
  };

  // A step that fails (a migration, the stream's settings) closes what the steps before it
  // opened: the caller gets the error, not a process held open by a pool or a socket.
  try {
    if (opts.postgres || opts.events) {
      await ensureDatabase(config.databaseUrl);
      const db = createDb<DB>({ url: config.databaseUrl, schema: config.dbSchema, log, max: config.databasePoolSize });
      closers.push(() => db.destroy());
      const migrations = {
        ...(opts.events ? { "0000_events": outboxMigration } : {}),
        ...(opts.requestIds ? { "0000_idempotency": idempotencyMigration } : {}),
        ...opts.migrations,
      };
      await runMigrations(db, { schema: config.dbSchema, migrations, log });
      if (opts.requestIds) {
        const pruning = startRequestIdPruning(db, log, opts.requestIds === true ? {} : opts.requestIds);
        closers.push(() => pruning.stop());
      }
      readiness.push({ name: "postgres", check: () => sql`SELECT 1`.execute(db) });
      platform.db = db;
    }
    if (redis) {
      readiness.push({
        name: "redis",
        check: async () => {
          if (!(await pingRedis(redis))) throw new Error("redis does not answer");
        },
      });
      platform.redis = redis;
    }
    if (opts.events) {
      const nc = await connectNats(config.natsUrl, log, { name: config.service });
      closers.push(() => nc.drain().catch(() => nc.close()));
      await ensureStream(nc, { name: config.natsStream, subjectPrefix: config.natsSubjectPrefix });
      readiness.push({ name: "nats", check: () => nc.flush() });
      platform.nc = nc;
      const relay = startOutboxRelay({
        db: platform.db,
        databaseUrl: config.databaseUrl,
        schema: config.dbSchema,
        nc,
        subjectPrefix: config.natsSubjectPrefix,
        log,
        registry: metrics.registry,
      });
      closers.push(() => relay.stop());
    }
  } catch (err) {
    await platform.close();
    throw err;
  }
  return platform;
}

/** What a service's composition root hands to `serve` (or a test to `listen`). */
export type ServerParts = Pick<ServiceServerOptions, "services" | "routes" | "httpRoutes" | "interceptors" | "trustForwardedFor">;

/**
 * Listens with the shared server on the platform's config, logs, metrics, readiness checks
 * and verifier (each overridable, e.g. a test's port or verifier), without taking over
 * process signals: what tests and `serve` share.
 */
export function listen<DB>(platform: Platform<DB>, server: ServerParts & Partial<ServiceServerOptions>): Promise<RunningServer> {
  return createServiceServer({
    config: platform.config,
    log: platform.log,
    metrics: platform.metrics,
    readiness: platform.readiness,
    verifier: platform.verifier,
    ...server,
  }).listen();
}

/**
 * Listens with the shared server and stops gracefully on SIGTERM/SIGINT: report
 * NOT_SERVING, finish in-flight calls, then close pools and connections.
 */
export async function serve<DB>(platform: Platform<DB>, server: ServerParts): Promise<RunningServer> {
  const running = await listen(platform, server);
  const stop = async (signal: string) => {
    platform.log.info({ signal }, "shutting down");
    await running.close();
    await platform.close();
    process.exit(0);
  };
  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));
  return running;
}
