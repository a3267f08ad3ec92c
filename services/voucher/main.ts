// Composition root of the voucher service: config → platform (Postgres schema `voucher`
// migrated, Redis, NATS + outbox relay, token verifier) → stores and use cases → the
// generation worker and the purchased-code consumer (durable JetStream consumers), the
// top-up scheduler (one leader among replicas) → one listener serving VoucherService.
//
// `startVoucher` builds everything without listening, so tests and benchmarks run the real
// service in-process on a spare port; run as a program, this file also listens and
// handles SIGTERM.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Interceptor } from "@connectrpc/connect";
import { CodeReceivedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { VoucherService } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import type { TokenVerifier } from "../kit/auth.js";
import { loadConfig, type Config } from "../kit/config.js";
import { createPool } from "../kit/db.js";
import { startConsumer } from "../kit/events/index.js";
import { serve, startPlatform, type Platform } from "../kit/platform.js";
import { createRateLimiter } from "../kit/ratelimit.js";
import type { ServiceServerOptions } from "../kit/server.js";
import { Books } from "./books.js";
import { CODE_RECEIVED } from "./events.js";
import { GenerationWorker } from "./generation.js";
import { Purchases, storePurchase } from "./purchased.js";
import { purchaseInput, voucherRoutes } from "./routes.js";
import { startScheduler, type Scheduler } from "./scheduler.js";
import { loadVoucherSettings, type VoucherSettings } from "./settings.js";
import { voucherMigrations, type VoucherDB } from "./store/schema.js";
import { databaseTrouble } from "./store/tx.js";
import { Vouchers } from "./vouchers.js";

/** Jobs at least this big refresh the planner's statistics of `codes` when they finish. */
const ANALYZE_AFTER_CODES = 10_000;

export interface VoucherProcess {
  platform: Platform<VoucherDB>;
  books: Books;
  vouchers: Vouchers;
  purchases: Purchases;
  worker: GenerationWorker;
  scheduler: Scheduler;
  server: Pick<ServiceServerOptions, "services" | "routes" | "interceptors">;
}

/** Postgres trouble that escaped a store call (a plain read while the database restarts) → UNAVAILABLE, not INTERNAL. */
const databaseErrors: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    throw databaseTrouble(err) ?? err;
  }
};

export async function startVoucher(config: Config, settings: VoucherSettings, opts: { verifier?: TokenVerifier } = {}): Promise<VoucherProcess> {
  const platform = await startPlatform<VoucherDB>(config, {
    postgres: true,
    redis: true,
    events: true,
    migrations: voucherMigrations,
    verifier: opts.verifier,
    requestIds: { keepMs: settings.requestRetentionMs },
  });
  try {
    const { db, redis, nc, log, metrics } = platform;
    // COPY needs a raw pg connection, which the kit's kysely pool does not hand out.
    const copyPool = createPool({
      url: config.databaseUrl,
      max: Math.max(2, settings.generationConcurrency),
      options: `-c search_path=${config.dbSchema}`,
      applicationName: `vouch-${config.dbSchema}-generation`,
      log,
    });
    platform.onClose(() => copyPool.end());

    const limiter = createRateLimiter(redis, {
      name: "voucher-validate",
      ratePerPeriod: settings.validateRatePerMinute,
      periodMs: 60_000,
      burst: settings.validateBurst,
      log,
      registry: metrics.registry,
    });
    const books = new Books({ db, settings, log });
    const vouchers = new Vouchers({ db, redis, limiter, log });
    const purchases = new Purchases({ db });

    const worker = new GenerationWorker({
      db,
      copyPool,
      settings,
      log,
      onJobDone: (job) => {
        if (job.generatedCount >= ANALYZE_AFTER_CODES) books.analyze().catch((err) => log.warn({ err }, "ANALYZE codes failed"));
      },
    });
    const generation = await worker.start(nc, config.natsStream, config.dbSchema, metrics.registry);
    platform.onClose(async () => {
      worker.stop();
      await generation.stop();
    });

    const received = await startConsumer({
      nc,
      stream: config.natsStream,
      durable: "voucher-purchased-codes",
      filterSubject: CODE_RECEIVED,
      schema: CodeReceivedSchema,
      db,
      schemaName: config.dbSchema,
      log,
      registry: metrics.registry,
      // One insert per event: a failure that survives a few quick retries is a conflicting
      // code (REQUEST_ID_REUSED), which no retry fixes, so park it early.
      backoffMs: [200, 500, 1_000, 2_000],
      // One transaction at a time, taking up to 32 waiting codes: a burst of purchases costs
      // one BEGIN, inbox insert and COMMIT per 32 codes, and never more than one connection.
      concurrency: 32,
      batchSize: 32,
      handle: async (trx, event) => {
        await storePurchase(trx, purchaseInput({ ...event, providerStatus: event.status }));
      },
    });
    platform.onClose(() => received.stop());

    const scheduler = startScheduler({ databaseUrl: config.databaseUrl, schema: config.dbSchema, db, books, settings, log });
    platform.onClose(() => scheduler.stop());

    return {
      platform,
      books,
      vouchers,
      purchases,
      worker,
      scheduler,
      server: { services: [VoucherService], routes: voucherRoutes({ books, vouchers, purchases }), interceptors: [databaseErrors] },
    };
  } catch (err) {
    await platform.close();
    throw err;
  }
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const voucher = await startVoucher(loadConfig("voucher"), loadVoucherSettings());
  await serve(voucher.platform, voucher.server);
}
