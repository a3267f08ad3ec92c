// Composition root of the promotion service: config → platform (Postgres schema
// `promotion` migrated, Redis for the public list's cache, NATS + outbox relay, token
// verifier) → the voucher service's client (with a SERVICE token from auth), the operator
// adapter → campaigns, grants, top-ups → the first-login consumer (`auth.user_logged_in`),
// the voucher issuer (`promotion.voucher_granted`), the sweep → one listener serving
// PromotionService and the bank's transfer webhook.
//
// `startPromotion` builds and starts everything but the listener, so tests and the bench
// run the real service in-process on a spare port; run as a program, this file also
// listens and handles SIGTERM.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { UserLoggedInSchema, VoucherGrantedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { PromotionService } from "../../gen/vouch/promotion/v1/promotion_pb.js";
import type { TokenVerifier } from "../kit/auth.js";
import { loadConfig, type Config } from "../kit/config.js";
import { createDb } from "../kit/db.js";
import { startConsumer } from "../kit/events/index.js";
import { counter } from "../kit/events/metrics.js";
import { serve, startPlatform, type Platform } from "../kit/platform.js";
import type { ServiceServerOptions } from "../kit/server.js";
import { Campaigns } from "./campaigns.js";
import { Grants, SUBJECTS } from "./grants.js";
import { invalidateActiveCache, promotionRoutes } from "./handlers.js";
import { createSimulatedOperator, type TopUpOperator } from "./operator.js";
import { loadPromotionSettings, type PromotionSettings } from "./settings.js";
import { promotionMigrations, type PromotionDB } from "./store/schema.js";
import { startSweeper, type Sweeper } from "./sweeper.js";
import { TopUps } from "./topups.js";
import { createVoucherGateway, type VoucherGateway } from "./voucher-client.js";
import { bankWebhookRoute } from "./webhook.js";

export interface PromotionProcess {
  platform: Platform<PromotionDB>;
  settings: PromotionSettings;
  campaigns: Campaigns;
  grants: Grants;
  topUps: TopUps;
  voucher: VoucherGateway;
  sweeper: Sweeper;
  /** What `serve` (or a test's createServiceServer) listens with. */
  server: Pick<ServiceServerOptions, "services" | "routes" | "httpRoutes">;
}

export interface PromotionOptions {
  verifier?: TokenVerifier;
  operator?: TopUpOperator;
  /** Environment for the service-token credentials (AUTH_CLIENT_ID / AUTH_CLIENT_SECRET). */
  env?: Record<string, string | undefined>;
}

export async function startPromotion(config: Config, settings: PromotionSettings, opts: PromotionOptions = {}): Promise<PromotionProcess> {
  const platform = await startPlatform<PromotionDB>(config, { postgres: true, redis: true, events: true, migrations: promotionMigrations, verifier: opts.verifier });
  try {
    const { db, nc, redis, log, metrics } = platform;
    const registry = metrics.registry;
    const grantsMade = counter(registry, "vouch_promotion_grants_total", "Campaign slots taken (grants made), by campaign type.", ["type"]);
    const topUpsFinished = counter(registry, "vouch_promotion_top_ups_finished_total", "Top-up orders that reached a final state, by state.", ["state"]);

    const voucher = createVoucherGateway({ voucherUrl: config.peers.voucher, authUrl: config.peers.auth, timeoutMs: settings.voucherCallTimeoutMs, env: opts.env });
    // Registered before the consumers and the sweeper: closers run in reverse, so the
    // channels close only after everything that calls voucher has stopped.
    platform.onClose(() => voucher.close());
    const operator = opts.operator ?? createSimulatedOperator({ refuse: settings.operatorRefuses });

    const campaigns = new Campaigns({ db, voucher, defaultCodePattern: settings.defaultCodePattern, log, onChange: () => void invalidateActiveCache(redis) });
    const grants = new Grants({ db, voucher, log, onGranted: (type, n) => grantsMade.inc({ type }, n) });
    const topUps = new TopUps({ db, voucher, operator, settings, log, onFinished: (state) => topUpsFinished.inc({ state }) });

    // The issuer holds its consumer transaction (a connection) while it waits for the voucher
    // service: it gets a pool of its own, so a slow voucher service never starves the rpcs.
    const issuerDb = createDb<PromotionDB>({ url: config.databaseUrl, schema: config.dbSchema, max: settings.issueConcurrency, applicationName: `vouch-${config.dbSchema}-issuer`, log });
    platform.onClose(() => issuerDb.destroy());

    const common = { nc, stream: config.natsStream, subjectPrefix: config.natsSubjectPrefix, schemaName: config.dbSchema, log, registry };
    const firstLogins = await startConsumer({
      ...common,
      durable: "promotion-first-login",
      filterSubject: SUBJECTS.userLoggedIn,
      schema: UserLoggedInSchema,
      db,
      concurrency: settings.grantConcurrency,
      backoffMs: [100, 500, 2_000, 5_000],
      handle: async (trx, event, meta) => void (await grants.grantFirstLogin(trx, event, meta)),
    });
    platform.onClose(() => firstLogins.stop());

    const issuer = await startConsumer({
      ...common,
      durable: "promotion-voucher-issuer",
      filterSubject: SUBJECTS.voucherGranted,
      schema: VoucherGrantedSchema,
      db: issuerDb,
      concurrency: settings.issueConcurrency,
      backoffMs: [200, 500, 1_000, 2_000, 5_000],
      handle: (trx, event) => grants.issueGranted(trx, event),
    });
    platform.onClose(() => issuer.stop());

    const sweeper = startSweeper({ campaigns, grants, topUps, intervalMs: settings.sweepIntervalMs, reconcileAfterMs: settings.reconcileAfterMs, log });
    platform.onClose(() => sweeper.stop());

    return {
      platform,
      settings,
      campaigns,
      grants,
      topUps,
      voucher,
      sweeper,
      server: {
        services: [PromotionService],
        routes: promotionRoutes({ db, redis, campaigns, grants, topUps, voucher, settings }),
        httpRoutes: [bankWebhookRoute({ topUps, secret: settings.webhookSecret, toleranceMs: settings.webhookToleranceMs, log, registry })],
      },
    };
  } catch (err) {
    await platform.close();
    throw err;
  }
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const config = loadConfig("promotion");
  const promotion = await startPromotion(config, loadPromotionSettings());
  await serve(promotion.platform, promotion.server);
}
