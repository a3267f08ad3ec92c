// Runs the real auth service in-process on a spare port, against the real Postgres, Redis
// and NATS, isolated per test file: its own database, Redis key prefix and JetStream
// stream, all removed by close(). Also starts a second service (a stand-in voucher
// service built on the same runtime) that verifies auth's tokens the way every other
// Vouch service does: through auth's JWKS URL and the shared revocation check.
import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import type { NatsConnection } from "nats";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { loadConfig, type Config } from "../../kit/config.js";
import { requireCaller } from "../../kit/context.js";
import { listen, startPlatform, type Platform } from "../../kit/platform.js";
import { createServiceServer, type HttpRoute, type RunningServer } from "../../kit/server.js";
import { createTestDatabase, deleteStream, testEventNames, uniqueSuffix } from "../../kit/testing.js";
import { startAuth, type AuthProcess } from "../main.js";
import { loadAuthSettings, type AuthSettings } from "../settings.js";

export const LOG_LEVEL = process.env.LOG_LEVEL ?? "silent";

export interface AuthHarness {
  url: string;
  config: Config;
  settings: AuthSettings;
  auth: AuthProcess;
  server: RunningServer;
  /** Over gRPC (HTTP/2), like other services call auth. */
  client: Client<typeof AuthService>;
  /** Times the JWKS was fetched over HTTP, for refetch tests. */
  jwksFetches: number[];
  nc: NatsConnection;
  /** Full subject of the login event in this file's stream. */
  loginSubject: string;
  close(): Promise<void>;
}

/** Per-call options that make the call come from `ip` (the harness trusts x-forwarded-for) and carry a token. */
export function as(opts: { ip?: string; token?: string }) {
  const headers: Record<string, string> = {};
  if (opts.ip) headers["x-forwarded-for"] = opts.ip;
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  return { headers };
}

/** A fresh client address for a test, so per-address limits of one test never touch another. */
export const freshIp = () => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`;

export async function startAuthHarness(label: string, tune: (s: AuthSettings) => void = () => {}, instances = 1): Promise<AuthHarness & { replicas: AuthHarness[] }> {
  const testDb = await createTestDatabase(`auth_${label}`);
  const events = testEventNames(`auth_${label}`);
  const config: Config = {
    ...loadConfig("auth", {}),
    port: 0,
    databaseUrl: testDb.url,
    redisKeyPrefix: `vouch-test:auth-${label}:${uniqueSuffix()}:`,
    natsStream: events.stream,
    natsSubjectPrefix: events.subjectPrefix,
    logLevel: LOG_LEVEL,
    shutdownGraceMs: 1_000,
    // Tests pick their client address with x-forwarded-for, as the edge would set it.
    trustForwardedFor: true,
  };
  const settings = loadAuthSettings({});
  // Throttling tests set their own limits; elsewhere they must not get in the way.
  settings.throttle.loginPerIp = { burst: 1_000, perHour: 100_000 };
  settings.throttle.registerPerIp = { burst: 1_000, perHour: 100_000 };
  tune(settings);

  const replicas: AuthHarness[] = [];
  try {
    for (let i = 0; i < instances; i++) replicas.push(await startReplica(config, settings, events.stream));
  } catch (err) {
    for (const r of replicas) await r.close().catch(() => {});
    await testDb.drop();
    throw err;
  }
  const first = replicas[0];
  return {
    ...first,
    replicas,
    async close() {
      for (const r of replicas.slice(1)) await r.close();
      await first.close();
      const redis = new Redis(config.redisUrl);
      try {
        let cursor = "0";
        do {
          const [next, keys] = await redis.scan(cursor, "MATCH", `${config.redisKeyPrefix}*`, "COUNT", 1000);
          if (keys.length) await redis.del(...keys);
          cursor = next;
        } while (cursor !== "0");
      } finally {
        redis.disconnect();
      }
      await testDb.drop();
    },
  };
}

async function startReplica(config: Config, settings: AuthSettings, stream: string): Promise<AuthHarness> {
  const auth = await startAuth(config, settings);
  const { platform } = auth;
  const jwksFetches: number[] = [];
  const httpRoutes: HttpRoute[] = (auth.server.httpRoutes ?? []).map((r) =>
    r.path === "/.well-known/jwks.json" ? { ...r, handle: (req, res) => (jwksFetches.push(Date.now()), r.handle(req, res)) } : r,
  );
  const server = await listen(platform, { ...auth.server, httpRoutes });
  const nc = platform.nc;
  return {
    url: server.url,
    config,
    settings,
    auth,
    server,
    client: createClient(AuthService, createGrpcTransport({ baseUrl: server.url })),
    jwksFetches,
    nc,
    loginSubject: `${config.natsSubjectPrefix}.auth.user_logged_in`,
    async close() {
      await server.close();
      await deleteStream(nc, stream).catch(() => {});
      await platform.close();
    },
  };
}

let userCounter = 0;

/** Registration input for a new, unique person. */
export function newPerson(password = "violet-otter-maps-42") {
  const n = `${Date.now().toString(36)}${(userCounter++).toString(36)}${randomInt(1_000).toString(36)}`;
  return {
    fullName: `Test Person ${n}`,
    username: `U${n}`,
    email: `Person.${n}@Example.com`,
    phoneNumber: `+8490${String(randomInt(10_000_000)).padStart(7, "0")}`,
    password,
    birthday: "",
  };
}

export interface PeerService {
  url: string;
  /** The stand-in voucher service, as a client. */
  client: Client<typeof VoucherService>;
  /** Handler invocations: must stay 0 for every refused token. */
  handled: () => number;
  /** Subjects and roles of the callers the handlers saw. */
  callers: { subject: string; roles: readonly string[] }[];
  close(): Promise<void>;
}

/**
 * Another Vouch service on the shared runtime, with the default verifier every service
 * gets from startPlatform: auth's JWKS over HTTP and the Redis revocation check.
 */
export async function startPeerService(h: AuthHarness): Promise<PeerService> {
  const config: Config = { ...loadConfig("voucher", {}), port: 0, redisKeyPrefix: h.config.redisKeyPrefix, logLevel: LOG_LEVEL, shutdownGraceMs: 1_000, jwt: h.config.jwt, peers: { ...h.config.peers, auth: h.url } };
  const platform: Platform<unknown> = await startPlatform(config, {});
  let handled = 0;
  const callers: PeerService["callers"] = [];
  const seen = (ctx: Parameters<typeof requireCaller>[0]) => {
    handled++;
    const c = requireCaller(ctx);
    callers.push({ subject: c.subject, roles: c.roles });
  };
  const server = await createServiceServer({
    config,
    log: platform.log,
    metrics: platform.metrics,
    readiness: platform.readiness,
    verifier: platform.verifier,
    services: [VoucherService],
    routes: (router) =>
      router.service(VoucherService, {
        listMyVouchers: (_req, ctx) => (seen(ctx), {}),
        issueVoucher: (_req, ctx) => (seen(ctx), {}),
      }),
  }).listen();
  return {
    url: server.url,
    client: createClient(VoucherService, createGrpcTransport({ baseUrl: server.url })),
    handled: () => handled,
    callers,
    async close() {
      await server.close();
      await platform.close();
    },
  };
}

/** Awaits a call that must fail with `code` and ErrorInfo `reason`; returns the error. */
export async function expectError(call: Promise<unknown>, code: Code, reason: string): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof ConnectError, `expected ${Code[code]} ${reason}, got ${err === undefined ? "success" : String(err)}`);
  assert.equal(Code[err.code], Code[code], `code of ${err.message}`);
  assert.equal(err.findDetails(ErrorInfoSchema)[0]?.reason, reason, `reason of ${err.message}`);
  return err;
}

/** [field, reason] of each BadRequest violation. */
export const violationsOf = (err: ConnectError) => err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => [v.field, v.reason]) ?? [];

/** RetryInfo's delay in ms. */
export function retryDelayMs(err: ConnectError): number {
  const d = err.findDetails(RetryInfoSchema)[0]?.retryDelay;
  assert.ok(d, "RetryInfo is present");
  return Number(d.seconds) * 1000 + d.nanos / 1e6;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
