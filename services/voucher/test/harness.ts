// Runs the real voucher service in-process on a spare port, against the real Postgres,
// Redis and NATS, with a database, Redis key prefix and JetStream stream of its own, and
// tokens signed by a key made here (a local JWKS stands in for auth).
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { loadConfig } from "../../kit/config.js";
import { listen } from "../../kit/platform.js";
import type { RunningServer } from "../../kit/server.js";
import { createRedis } from "../../kit/redis.js";
import { createLogger } from "../../kit/log.js";
import { connectNats } from "../../kit/events/index.js";
import { createTestDatabase, createTestTokens, deleteStream, testEventNames, uniqueSuffix, type TestDatabase } from "../../kit/testing.js";
import { loadVoucherSettings, type VoucherSettings } from "../settings.js";
import { startVoucher, type VoucherProcess } from "../main.js";

const ISSUER = "https://auth.voucher-test";
const AUDIENCE = "vouch-voucher-test";

export interface Replica {
  voucher: VoucherProcess;
  server: RunningServer;
  client: Client<typeof VoucherService>;
  stop(): Promise<void>;
}

export interface Harness {
  db: TestDatabase;
  stream: string;
  subjectPrefix: string;
  redisPrefix: string;
  /** The first replica (most tests need only one). */
  voucher: VoucherProcess;
  client: Client<typeof VoucherService>;
  url: string;
  /** Starts one more replica on the same database, Redis prefix and stream. */
  replica(settings?: Partial<VoucherSettings>): Promise<Replica>;
  token(sub: string, roles?: string[], claims?: Record<string, unknown>): Promise<string>;
  as(sub: string, roles?: string[], claims?: Record<string, unknown>): Promise<{ headers: { authorization: string } }>;
  admin(): Promise<{ headers: { authorization: string } }>;
  service(): Promise<{ headers: { authorization: string } }>;
  close(): Promise<void>;
}

export async function startHarness(label: string, overrides: Partial<VoucherSettings> = {}): Promise<Harness> {
  const db = await createTestDatabase(`voucher_${label}`);
  const { stream, subjectPrefix } = testEventNames(`voucher_${label}`);
  const redisPrefix = `vouch-test:${label}:${uniqueSuffix()}:`;
  const signer = await createTestTokens({ issuer: ISSUER, audience: AUDIENCE, kid: "voucher-test-key" });
  const verifier = signer.verifier;
  const replicas: Replica[] = [];

  async function replica(extra: Partial<VoucherSettings> = {}): Promise<Replica> {
    const config = {
      ...loadConfig("voucher", {
        ...process.env,
        DATABASE_URL: db.url,
        REDIS_KEY_PREFIX: redisPrefix,
        NATS_STREAM: stream,
        NATS_SUBJECT_PREFIX: subjectPrefix,
        JWT_ISSUER: ISSUER,
        JWT_AUDIENCE: AUDIENCE,
        LOG_LEVEL: process.env.LOG_LEVEL ?? "silent",
      }),
      port: 0,
      shutdownGraceMs: 2_000,
    };
    const settings = { ...loadVoucherSettings({}), schedulerIntervalMs: 200, ...overrides, ...extra };
    const voucher = await startVoucher(config, settings, { verifier });
    const server = await listen(voucher.platform, { ...voucher.server, verifier });
    const client = createClient(VoucherService, createGrpcTransport({ baseUrl: server.url }));
    let stopped: Promise<void> | undefined;
    const r: Replica = {
      voucher,
      server,
      client,
      stop: () =>
        (stopped ??= (async () => {
          await server.close();
          await voucher.platform.close();
        })()),
    };
    replicas.push(r);
    return r;
  }

  const first = await replica();
  const token = signer.sign;
  const as = async (sub: string, roles?: string[], claims?: Record<string, unknown>) => ({ headers: { authorization: `Bearer ${await token(sub, roles, claims)}` } });

  return {
    db,
    stream,
    subjectPrefix,
    redisPrefix,
    voucher: first.voucher,
    client: first.client,
    url: first.server.url,
    replica,
    token,
    as,
    admin: () => as("admin-1", ["ADMIN"]),
    service: () => as("promotion", ["SERVICE"]),
    async close() {
      const log = createLogger("voucher-test", "silent");
      for (const r of replicas.reverse()) await r.stop().catch((err) => console.error("replica stop failed:", err));
      const nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", log);
      await deleteStream(nc, stream).catch(() => {});
      await nc.close();
      const redis = createRedis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", { keyPrefix: "", log, name: "voucher-test-cleanup" });
      const keys = await redis.keys(`${redisPrefix}*`);
      if (keys.length) await redis.del(...keys);
      await redis.quit();
      await db.drop();
    },
  };
}

/** Awaits a call that must fail; returns its code and ErrorInfo reason. */
export async function failure(call: Promise<unknown>): Promise<{ code: string; reason: string | undefined; err: ConnectError }> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof ConnectError)) throw new Error(`expected the call to fail with a ConnectError, got ${err === undefined ? "success" : String(err)}`);
  return { code: Code[err.code], reason: err.findDetails(ErrorInfoSchema)[0]?.reason, err };
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const usd = (minor: number) => ({ minorUnits: BigInt(minor), currencyCode: "USD" });

/** Book fields for tests: 10% off, single use, an 8-placeholder pattern. */
export function bookInput(overrides: Record<string, unknown> = {}) {
  return {
    name: "Test book",
    discount: { kind: { case: "percentOff" as const, value: { basisPoints: 1000 } } },
    codePattern: "T-*{8}",
    ...overrides,
  };
}
