// Composition root of the provider service: config → platform (Postgres schema `provider`
// migrated, Redis for RequestCode's rate limits, NATS + outbox relay, token verifier) → the outside provider's client behind a
// circuit breaker, the SMS sender, the change feed → the worker (`code_requested`), the
// delivery (`voucher.purchased_code_stored`: a code is delivered once the voucher service
// stored it), the deadline sweep → one listener serving ProviderService
// and the provider's callback endpoint.
//
// `startProvider` builds and starts everything but the listener, so tests run the real
// service in-process on a spare port; run as a program, this file also listens and
// handles SIGTERM.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { CodeRequestedSchema, PurchasedCodeStoredSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { ProviderService } from "../../gen/vouch/provider/v1/provider_pb.js";
import type { TokenVerifier } from "../kit/auth.js";
import { loadConfig, type Config } from "../kit/config.js";
import { createDb } from "../kit/db.js";
import { startConsumer } from "../kit/events/index.js";
import { serve, startPlatform, type Platform } from "../kit/platform.js";
import { createRateLimiter } from "../kit/ratelimit.js";
import type { ServiceServerOptions } from "../kit/server.js";
import { createProviderGateway, type ProviderGateway } from "./breaker.js";
import { callbackRoute } from "./callback.js";
import { startChangeFeed } from "./changes.js";
import { codeStoredHandler } from "./delivery.js";
import { SUBJECTS } from "./events.js";
import { providerRoutes } from "./handlers.js";
import { createProviderClient } from "./provider-client.js";
import { loadProviderSettings, type ProviderSettings, type RequestLimit } from "./settings.js";
import { createDevSmsSink, createHttpSmsGateway, type SmsSender } from "./sms.js";
import { providerMigrations, type ProviderDB } from "./store/schema.js";
import { startSweeper, type Sweeper } from "./sweeper.js";
import { callbackPath, codeRequestedHandler } from "./worker.js";

/** Deliveries of a `purchased_code_stored` event before an SMS that cannot be sent fails the request. */
const SMS_DELIVERY_ATTEMPTS = 10;

export interface ProviderProcess {
  platform: Platform<ProviderDB>;
  settings: ProviderSettings;
  gateway: ProviderGateway;
  sms: SmsSender;
  sweeper: Sweeper;
  /** What `serve` (or a test's createServiceServer) listens with. */
  server: Pick<ServiceServerOptions, "services" | "routes" | "httpRoutes">;
}

export async function startProvider(config: Config, settings: ProviderSettings, opts: { verifier?: TokenVerifier } = {}): Promise<ProviderProcess> {
  const platform = await startPlatform<ProviderDB>(config, { postgres: true, redis: true, events: true, migrations: providerMigrations, verifier: opts.verifier, requestIds: true });
  try {
    const { db, nc, redis, log, metrics } = platform;
    const registry = metrics.registry;
    const limiter = (name: string, limit: RequestLimit) =>
      limit.perMinute > 0 ? createRateLimiter(redis, { name, ratePerPeriod: limit.perMinute, periodMs: 60_000, burst: limit.burst, log, registry }) : undefined;
    const limits = {
      perUser: limiter("provider-request-user", settings.requestLimits.perUser),
      perPhoneNumber: limiter("provider-request-phone", settings.requestLimits.perPhoneNumber),
    };

    // The kit consumer holds a transaction (so a connection) for the whole of each handler,
    // and the worker's handler waits up to the breaker timeout for the provider: the two
    // consumers get a pool of their own, sized to their concurrency, so slow provider calls
    // and deliveries never starve the rpcs, callbacks, sweep and outbox relay.
    const consumerDb = createDb<ProviderDB>({
      url: config.databaseUrl,
      schema: config.dbSchema,
      max: settings.workerConcurrency + Math.ceil(settings.deliveryConcurrency / settings.deliveryBatchSize),
      applicationName: `vouch-${config.dbSchema}-consumers`,
      log,
    });
    platform.onClose(() => consumerDb.destroy());

    const gateway = createProviderGateway({ client: createProviderClient(settings.apiUrl), breaker: settings.breaker, log, registry });
    platform.onClose(() => gateway.shutdown());

    const sms = settings.smsGatewayUrl
      ? createHttpSmsGateway({ url: settings.smsGatewayUrl, token: settings.smsGatewayToken, log })
      : createDevSmsSink(log);
    log.info({ apiUrl: settings.apiUrl, callbackBaseUrl: settings.callbackBaseUrl, sms: sms.kind }, "provider integration configured");

    const feed = startChangeFeed({ databaseUrl: config.databaseUrl, log });
    platform.onClose(() => feed.stop());

    const common = { nc, stream: config.natsStream, subjectPrefix: config.natsSubjectPrefix, schemaName: config.dbSchema, log, registry };
    const worker = await startConsumer({
      ...common,
      durable: "provider-worker",
      filterSubject: SUBJECTS.codeRequested,
      schema: CodeRequestedSchema,
      db: consumerDb,
      concurrency: settings.workerConcurrency,
      backoffMs: settings.retryBackoffMs,
      // A failed provider call is retried as transient (the request counts its own attempts
      // and fails after maxAttempts); a database outage may last until the deadline.
      maxTransientDeliveries: Math.max(200, 2 * Math.ceil(settings.requestDeadlineMs / Math.max(1, settings.retryBackoffMs[settings.retryBackoffMs.length - 1]))),
      // Waiting out an open breaker is a deferral (retryLater), not a failure: allow enough
      // of them to reach the request's deadline, after which the worker ends the request.
      maxDeferrals: 2 * Math.ceil(settings.requestDeadlineMs / Math.max(1, Math.min(...settings.retryBackoffMs))),
      handle: codeRequestedHandler({
        db,
        gateway,
        maxAttempts: settings.maxAttempts,
        retryBackoffMs: settings.retryBackoffMs,
        requestDeadlineMs: settings.requestDeadlineMs,
        callbackUrl: (id) => `${settings.callbackBaseUrl}${callbackPath(id)}`,
        log,
      }),
    });
    platform.onClose(() => worker.stop());

    const delivery = await startConsumer({
      ...common,
      durable: "provider-delivery",
      filterSubject: SUBJECTS.purchasedCodeStored,
      schema: PurchasedCodeStoredSchema,
      db: consumerDb,
      concurrency: settings.deliveryConcurrency,
      // A delivery is one or two statements on its own request's row: a burst of them shares
      // transactions. An SMS of a batch that then fails may go out twice (at least once).
      batchSize: settings.deliveryBatchSize,
      backoffMs: [500, 2_000, 5_000, 15_000],
      handle: codeStoredHandler({ sms, maxAttempts: SMS_DELIVERY_ATTEMPTS, log }),
    });
    platform.onClose(() => delivery.stop());

    const sweeper = startSweeper({ db, sms, intervalMs: settings.sweepIntervalMs, log, registry });
    platform.onClose(() => sweeper.stop());

    return {
      platform,
      settings,
      gateway,
      sms,
      sweeper,
      server: {
        services: [ProviderService],
        routes: providerRoutes({ db, gateway, feed, sms, limits, requestDeadlineMs: settings.requestDeadlineMs, watchMaxMs: settings.watchMaxMs }),
        httpRoutes: [callbackRoute({ db, log, registry })],
      },
    };
  } catch (err) {
    await platform.close();
    throw err;
  }
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const config = loadConfig("provider");
  const provider = await startProvider(config, loadProviderSettings(config));
  await serve(provider.platform, provider.server);
}
