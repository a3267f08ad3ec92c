// Composition root of the auth service: config → platform (Postgres schema `auth` migrated,
// Redis, NATS + outbox relay, a local token verifier) → key ring, throttles, accounts,
// admin bootstrap, housekeeping → one listener serving AuthService and the JWKS.
//
// `startAuth` builds everything without listening, so tests run the real service
// in-process on a spare port; run as a program, this file also listens and handles SIGTERM.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { AuthService } from "../../gen/vouch/auth/v1/auth_pb.js";
import { createTokenVerifier } from "../kit/auth.js";
import { loadConfig, type Config } from "../kit/config.js";
import { serve, startPlatform, type Platform } from "../kit/platform.js";
import { createRevocationCheck, MAX_ACCESS_TOKEN_TTL_MS, type RevocationCheck } from "../kit/revocation.js";
import { sendHttp, type HttpRoute, type ServiceServerOptions } from "../kit/server.js";
import { Accounts } from "./accounts.js";
import { bootstrapAdmin } from "./bootstrap.js";
import { authRoutes } from "./handlers.js";
import { startHousekeeping } from "./housekeeping.js";
import { KeyRing } from "./keys.js";
import { loadAuthSettings, usesDevSecrets, type AuthSettings } from "./settings.js";
import { authMigrations, type AuthDB } from "./store/schema.js";
import { createThrottles } from "./throttle.js";

/** Every replica reloads the key ring this often, to sign with a key rotated on another one. */
const KEY_RELOAD_MS = 30_000;

export interface AuthProcess {
  platform: Platform<AuthDB>;
  accounts: Accounts;
  keys: KeyRing;
  /** What `serve` (or a test's createServiceServer) listens with. */
  server: Pick<ServiceServerOptions, "services" | "routes" | "httpRoutes">;
}

export function jwksRoute(keys: KeyRing): HttpRoute {
  return {
    method: "GET",
    path: "/.well-known/jwks.json",
    // Short cache: verifiers learn the next key within a minute; an unknown kid refetches anyway.
    handle: (_req, res) => sendHttp(res, 200, "application/jwk-set+json", JSON.stringify({ keys: keys.jwks() }), { "cache-control": "public, max-age=60" }),
  };
}

export async function startAuth(config: Config, settings: AuthSettings): Promise<AuthProcess> {
  // Auth verifies its own tokens from its own key ring (no HTTP round trip to itself).
  // The ring and the revocation check need the platform's Postgres and Redis, so the
  // verifier reaches them through this holder, filled in before the listener opens.
  const local: { keys?: KeyRing; revocation?: RevocationCheck } = {};
  const verifier = createTokenVerifier({
    issuer: config.jwt.issuer,
    audience: config.jwt.audience,
    keys: (header, token) => local.keys!.verificationKey(header, token),
    isRevoked: (caller) => local.revocation!.isRevoked(caller),
  });
  const platform = await startPlatform<AuthDB>(config, {
    postgres: true,
    redis: true,
    events: true,
    migrations: authMigrations,
    verifier,
    // Register and RotateSigningKey retries come within minutes; a day is plenty.
    requestIds: { keepMs: 86_400_000 },
  });
  try {
    const { db, redis, log } = platform;
    if (usesDevSecrets(settings)) log.warn("AUTH_KEY_ENCRYPTION_SECRET is not set: signing keys are encrypted with the public dev secret");

    const keys = new KeyRing({
      db,
      encryptionSecret: settings.keyEncryptionSecret,
      // A replaced key keeps verifying until every token it signed has expired, counting
      // tokens signed by replicas that have not reloaded yet, plus clock skew.
      retireAfterMs: MAX_ACCESS_TOKEN_TTL_MS + KEY_RELOAD_MS + 60_000,
      reloadEveryMs: KEY_RELOAD_MS,
      log,
    });
    await keys.start();
    platform.onClose(() => keys.stop());
    local.keys = keys;
    local.revocation = createRevocationCheck({ redis, log, registry: platform.metrics.registry });

    const accounts = new Accounts({
      db,
      redis,
      tokens: { keys, issuer: config.jwt.issuer, audience: config.jwt.audience },
      throttles: createThrottles(redis, settings, log, platform.metrics.registry),
      settings,
      log,
    });
    await accounts.ready();
    await bootstrapAdmin(db, settings.admin, log);

    const housekeeping = startHousekeeping({ db, redis, log });
    platform.onClose(() => housekeeping.stop());

    return {
      platform,
      accounts,
      keys,
      server: {
        services: [AuthService],
        routes: authRoutes({ accounts, keys }),
        httpRoutes: [jwksRoute(keys)],
      },
    };
  } catch (err) {
    await platform.close();
    throw err;
  }
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const auth = await startAuth(loadConfig("auth"), loadAuthSettings());
  await serve(auth.platform, auth.server);
}
