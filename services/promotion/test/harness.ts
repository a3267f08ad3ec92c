// Runs the real platform slice promotion needs, in-process, against the real Postgres,
// Redis and NATS, isolated per test file (one database holding the auth, voucher and
// promotion schemas, one JetStream stream, one Redis key prefix, all removed by close()):
//   - auth (its JWKS verifies every token; it issues promotion's SERVICE token),
//   - voucher (books, IssueVoucher, reservations, redemptions),
//   - promotion, one replica or more, in-process or as a child process that can be killed.
// Customer and admin tokens are signed with auth's own key ring (no argon2 per user);
// tests that exercise real logins register and log in through auth's rpcs.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomInt } from "node:crypto";
import * as net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import type { NatsConnection } from "nats";
import { BadRequestSchema, ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { UserLoggedInSchema } from "../../../gen/vouch/events/v1/events_pb.js";
import { PromotionService, type Campaign } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { startAuth, type AuthProcess } from "../../auth/main.js";
import { loadAuthSettings } from "../../auth/settings.js";
import { issueAccessToken } from "../../auth/tokens.js";
import { loadConfig, type Config } from "../../kit/config.js";
import { connectNats } from "../../kit/events/index.js";
import { newId } from "../../kit/ids.js";
import { createLogger } from "../../kit/log.js";
import { createServiceServer, type RunningServer } from "../../kit/server.js";
import { createTestDatabase, deleteStream, testEventNames, uniqueSuffix, type TestDatabase } from "../../kit/testing.js";
import { startVoucher, type VoucherProcess } from "../../voucher/main.js";
import { loadVoucherSettings } from "../../voucher/settings.js";
import { startPromotion, type PromotionOptions, type PromotionProcess } from "../main.js";
import { loadPromotionSettings, type PromotionSettings } from "../settings.js";
import { SUBJECTS } from "../grants.js";

export const LOG_LEVEL = process.env.LOG_LEVEL === "warn" ? "silent" : process.env.LOG_LEVEL ?? "silent";
const ISSUER = "https://auth.promotion-test";
const AUDIENCE = "vouch-promotion-test";

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Polls `probe` until it returns something truthy; never a sleep as synchronisation. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false | null>, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const vnd = (minor: number | bigint) => ({ minorUnits: BigInt(minor), currencyCode: "VND" });

/** A campaign for CreateCampaign: 30 % off, at most 50,000 đồng, 30 days. */
export function campaignInput(overrides: Partial<Record<keyof Campaign, unknown>> = {}) {
  return {
    name: "First 100 users get 30%",
    description: "Top up your phone with 30% off",
    type: 1, // FIRST_LOGIN
    quota: 100,
    voucherTerms: {
      discount: { kind: { case: "percentOff" as const, value: { basisPoints: 3000, maxAmount: vnd(50_000) } } },
      minimumTopUpAmount: vnd(20_000),
      validityDays: 30,
      codePattern: "T-*{10}",
    },
    ...overrides,
  } as never;
}

export interface Replica {
  url: string;
  client: Client<typeof PromotionService>;
  stop(): Promise<void>;
}

export interface ChildReplica extends Replica {
  /** SIGKILL: no shutdown, in-flight work is cut where it stands. */
  kill(): Promise<void>;
}

export interface Harness {
  testDb: TestDatabase;
  config: Config;
  settings: PromotionSettings;
  promotion: PromotionProcess;
  client: Client<typeof PromotionService>;
  url: string;
  auth: AuthProcess;
  authClient: Client<typeof AuthService>;
  voucher: VoucherProcess;
  voucherClient: Client<typeof VoucherService>;
  nc: NatsConnection;
  /** Stops the first replica (its listener and platform). */
  stopPrimary(): Promise<void>;
  /** Another in-process replica on the same database, stream and Redis prefix. */
  replica(opts?: PromotionOptions): Promise<Replica & { promotion: PromotionProcess }>;
  /** A replica as its own OS process (killable), on the same database, stream and prefix. */
  childReplica(): Promise<ChildReplica>;
  token(sub: string, roles?: string[]): Promise<string>;
  as(sub: string, roles?: string[]): Promise<{ headers: { authorization: string } }>;
  admin(): Promise<{ headers: { authorization: string } }>;
  /** Publishes a `user_logged_in` event exactly as auth's outbox relay would (Nats-Msg-Id = event id). */
  publishLogin(userId: string, opts?: { firstLogin?: boolean; eventId?: string; loginTime?: Date }): Promise<string>;
  /** CreateCampaign + ActivateCampaign, waiting until the book has its codes. */
  activeCampaign(overrides?: Parameters<typeof campaignInput>[0]): Promise<Campaign>;
  close(): Promise<void>;
}

export async function startHarness(label: string, opts: { tune?: (s: PromotionSettings) => void; promotion?: PromotionOptions } = {}): Promise<Harness> {
  const testDb = await createTestDatabase(`promotion_${label}`);
  const events = testEventNames(`promotion_${label}`);
  const redisPrefix = `vouch-test:promotion-${label}:${uniqueSuffix()}:`;
  const closers: (() => Promise<unknown>)[] = [];
  const log = createLogger("promotion-test", LOG_LEVEL);
  const nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", log, { name: "promotion-test" });

  const baseEnv = {
    DATABASE_URL: testDb.url,
    REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
    NATS_URL: process.env.NATS_URL ?? "nats://127.0.0.1:4222",
    REDIS_KEY_PREFIX: redisPrefix,
    NATS_STREAM: events.stream,
    NATS_SUBJECT_PREFIX: events.subjectPrefix,
    JWT_ISSUER: ISSUER,
    JWT_AUDIENCE: AUDIENCE,
    LOG_LEVEL,
  };
  const listen = async (server: Parameters<typeof createServiceServer>[0]) => {
    const running = await createServiceServer(server).listen();
    closers.push(() => running.close());
    return running;
  };

  try {
    // auth
    const authConfig: Config = { ...loadConfig("auth", baseEnv), port: 0, shutdownGraceMs: 500 };
    const authSettings = loadAuthSettings({});
    authSettings.throttle.loginPerIp = { burst: 10_000, perHour: 1_000_000 };
    authSettings.throttle.registerPerIp = { burst: 10_000, perHour: 1_000_000 };
    const auth = await startAuth(authConfig, authSettings);
    closers.push(() => auth.platform.close());
    const authServer = await listen({ ...auth.server, config: authConfig, log: auth.platform.log, metrics: auth.platform.metrics, readiness: auth.platform.readiness, verifier: auth.platform.verifier });

    // voucher
    const env = { ...baseEnv, AUTH_URL: authServer.url };
    const voucherConfig: Config = { ...loadConfig("voucher", env), port: 0, shutdownGraceMs: 500 };
    const voucher = await startVoucher(voucherConfig, { ...loadVoucherSettings({}), schedulerIntervalMs: 500, validateRatePerMinute: 6_000, validateBurst: 1_000 });
    closers.push(() => voucher.platform.close());
    const voucherServer = await listen({ ...voucher.server, config: voucherConfig, log: voucher.platform.log, metrics: voucher.platform.metrics, readiness: voucher.platform.readiness, verifier: voucher.platform.verifier });

    // promotion
    const promotionEnv = { ...env, VOUCHER_URL: voucherServer.url };
    const config: Config = { ...loadConfig("promotion", promotionEnv), port: 0, shutdownGraceMs: 500 };
    const settings = loadPromotionSettings({});
    settings.sweepIntervalMs = 100;
    settings.reconcileAfterMs = 1_000;
    settings.grantConcurrency = 4;
    settings.issueConcurrency = 4;
    opts.tune?.(settings);

    async function replica(extra: PromotionOptions = {}) {
      const promotion = await startPromotion(config, settings, { ...opts.promotion, ...extra });
      const server = await createServiceServer({ ...promotion.server, config, log: promotion.platform.log, metrics: promotion.platform.metrics, readiness: promotion.platform.readiness, verifier: promotion.platform.verifier }).listen();
      let stopped: Promise<void> | undefined;
      const stop = () =>
        (stopped ??= (async () => {
          await server.close();
          await promotion.platform.close();
        })());
      closers.push(stop);
      return { promotion, url: server.url, client: createClient(PromotionService, createGrpcTransport({ baseUrl: server.url })), stop };
    }

    async function childReplica(): Promise<ChildReplica> {
      const port = await freePort();
      const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "services/promotion/main.ts"], {
        env: {
          ...process.env,
          ...promotionEnv,
          PROMOTION_PORT: String(port),
          HOST: "127.0.0.1",
          PROMOTION_SWEEP_INTERVAL_MS: String(settings.sweepIntervalMs),
          PROMOTION_RECONCILE_AFTER_MS: String(settings.reconcileAfterMs),
          PROMOTION_GRANT_CONCURRENCY: String(settings.grantConcurrency),
          PROMOTION_ISSUE_CONCURRENCY: String(settings.issueConcurrency),
          SHUTDOWN_GRACE_MS: "500",
        },
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
      const hardKill = () => child.kill("SIGKILL");
      process.once("exit", hardKill);
      const url = `http://127.0.0.1:${port}`;
      await waitFor(
        "the promotion child process to serve",
        async () => {
          if (child.exitCode !== null) throw new Error(`promotion child exited with ${child.exitCode}: ${stderr}`);
          return fetch(`${url}/healthz`).then((r) => r.ok, () => false);
        },
        30_000,
        100,
      );
      const exited = new Promise((r) => child.once("exit", r));
      const end = async (signal: NodeJS.Signals) => {
        process.off("exit", hardKill);
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        await exited;
      };
      closers.push(() => end("SIGKILL"));
      return { url, client: createClient(PromotionService, createGrpcTransport({ baseUrl: url })), stop: () => end("SIGTERM"), kill: () => end("SIGKILL") };
    }

    const first = await replica();
    const tokens = { keys: auth.keys, issuer: ISSUER, audience: AUDIENCE };
    const token = async (sub: string, roles = ["CUSTOMER"]) => (await issueAccessToken(tokens, { subject: sub, roles, ttlMs: 600_000 })).token;
    const as = async (sub: string, roles?: string[]) => ({ headers: { authorization: `Bearer ${await token(sub, roles)}` } });
    const js = nc.jetstream();

    const h: Harness = {
      testDb,
      config,
      settings,
      promotion: first.promotion,
      client: first.client,
      url: first.url,
      auth,
      authClient: createClient(AuthService, createGrpcTransport({ baseUrl: authServer.url })),
      voucher,
      voucherClient: createClient(VoucherService, createGrpcTransport({ baseUrl: voucherServer.url })),
      nc,
      stopPrimary: () => first.stop(),
      replica,
      childReplica,
      token,
      as,
      admin: () => as("admin-1", ["ADMIN"]),
      async publishLogin(userId, o = {}) {
        const eventId = o.eventId ?? newId();
        const payload = toBinary(UserLoggedInSchema, create(UserLoggedInSchema, { userId, firstLogin: o.firstLogin ?? true, loginTime: timestampFromDate(o.loginTime ?? new Date()) }));
        await js.publish(`${events.subjectPrefix}.${SUBJECTS.userLoggedIn}`, payload, { msgID: eventId });
        return eventId;
      },
      async activeCampaign(overrides = {}) {
        const admin = await h.admin();
        const { campaign } = await h.client.createCampaign({ campaign: campaignInput(overrides) }, admin);
        await waitFor("the campaign's book to hold its codes", async () => {
          const res = await h.voucherClient.getBook({ bookId: campaign!.bookId }, admin);
          return res.book!.codeCount >= BigInt(campaign!.quota);
        });
        return (await h.client.activateCampaign({ campaignId: campaign!.id }, admin)).campaign!;
      },
      async close() {
        for (const close of closers.reverse()) await close().catch((err) => console.error("close failed:", err));
        await deleteStream(nc, events.stream).catch(() => {});
        await nc.close();
        const redis = new Redis(baseEnv.REDIS_URL);
        try {
          const keys = await redis.keys(`${redisPrefix}*`);
          if (keys.length) await redis.del(...keys);
        } finally {
          redis.disconnect();
        }
        await testDb.drop();
      },
    };
    return h;
  } catch (err) {
    for (const close of closers.reverse()) await close().catch(() => {});
    await nc.close();
    await testDb.drop();
    throw err;
  }
}

/** Asserts that `call` fails with this code and ErrorInfo reason; returns the error. */
export async function expectError(call: Promise<unknown>, code: Code, reason: string): Promise<ConnectError> {
  const err = await call.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err === undefined ? "success" : String(err)}`);
  assert.equal(Code[err.code], Code[code], err.message);
  assert.equal(err.findDetails(ErrorInfoSchema)[0]?.reason, reason, err.message);
  return err;
}

/** The fields named by the BadRequest violations of an INVALID_ARGUMENT error. */
export const violatedFields = (err: ConnectError) => err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => v.field) ?? [];

let phoneCounter = 0;
/** A valid Vietnamese mobile number. */
export function newPhone(): string {
  const n = ((Date.now() % 100_000) * 10 + (phoneCounter++ % 10) + randomInt(100) * 1_000_000) % 10_000_000;
  return `+8490${String(n).padStart(7, "0")}`;
}
