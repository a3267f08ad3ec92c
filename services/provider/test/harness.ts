// Runs the real provider service in-process on a spare port against the real Postgres and
// NATS (a database and a stream of its own per test file), with provider-sim as a real
// separate process (`node --import tsx services/provider-sim/main.ts`) on another spare
// port, and the real voucher service next to it (same database and stream): it stores each
// received code, and only then does the provider deliver it. Tokens are minted here with jose and verified through a local JWKS, the way
// every service verifies auth's tokens.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomInt, randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import type { NatsConnection } from "nats";
import { connectNats } from "../../kit/events/index.js";
import { createLogger } from "../../kit/log.js";
import { ErrorInfoSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { CodeReceivedSchema, type CodeReceived } from "../../../gen/vouch/events/v1/events_pb.js";
import { ProviderService } from "../../../gen/vouch/provider/v1/provider_pb.js";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import type { TokenVerifier } from "../../kit/auth.js";
import { loadConfig, type Config } from "../../kit/config.js";
import { listen } from "../../kit/platform.js";
import type { RunningServer } from "../../kit/server.js";
import { createTestDatabase, createTestTokens, deleteStream, freePort, testEventNames, uniqueSuffix, waitFor, type TestDatabase } from "../../kit/testing.js";
import type { Behaviour, SimConfig } from "../../provider-sim/behaviour.js";
import type { SimCall, SimRequest } from "../../provider-sim/sim.js";
import type { RequestState } from "../domain/states.js";
import { startVoucher, type VoucherProcess } from "../../voucher/main.js";
import { loadVoucherSettings } from "../../voucher/settings.js";
import { startProvider, type ProviderProcess } from "../main.js";
import { loadProviderSettings, type ProviderSettings } from "../settings.js";
import { getCodeRequest, type CodeRequestRow } from "../store/requests.js";

export const LOG_LEVEL = process.env.LOG_LEVEL ?? "silent";
const ISSUER = "https://auth.provider-test";
const AUDIENCE = "vouch-provider-test";

export { freePort, waitFor };

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let phoneCounter = 0;
/** A valid Vietnamese mobile number no other test uses. */
export function newPhone(): string {
  const n = (Date.now() % 1_000_000) * 10 + (phoneCounter++ % 10) + randomInt(1_000) * 10_000_000;
  return `+8490${String(n % 10_000_000).padStart(7, "0")}`;
}

// ── provider-sim as a real process ─────────────────────────────────────────────────────

export interface SimProcess {
  url: string;
  configure(config: { default?: Partial<Behaviour>; byPhoneNumber?: Record<string, Partial<Behaviour>> }): Promise<SimConfig>;
  requests(): Promise<SimRequest[]>;
  request(requestId: string): Promise<SimRequest | undefined>;
  calls(): Promise<SimCall[]>;
  /** Posts the scheduled callback of a request now. */
  callBackNow(requestId: string): Promise<SimRequest>;
  stop(): Promise<void>;
}

export async function startSim(initial: { default?: Partial<Behaviour>; byPhoneNumber?: Record<string, Partial<Behaviour>> } = {}): Promise<SimProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "services/provider-sim/main.ts"], {
    env: { ...process.env, PROVIDER_SIM_PORT: String(port), HOST: "127.0.0.1", LOG_LEVEL, PROVIDER_SIM_BEHAVIOUR: JSON.stringify(initial) },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  await waitFor(
    "provider-sim to listen",
    async () => {
      if (child.exitCode !== null) throw new Error(`provider-sim exited with ${child.exitCode}: ${stderr}`);
      return fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    },
    20_000,
  );
  const get = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}${path}`);
    return (await res.json()) as T;
  };
  return {
    url,
    async configure(config) {
      const res = await fetch(`${url}/sim/config`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(config) });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      return body as SimConfig;
    },
    requests: async () => (await get<{ requests: SimRequest[] }>("/sim/requests")).requests,
    async request(requestId) {
      const res = await fetch(`${url}/sim/requests/${requestId}`);
      return res.ok ? ((await res.json()) as SimRequest) : undefined;
    },
    calls: async () => (await get<{ calls: SimCall[] }>("/sim/calls")).calls,
    async callBackNow(requestId) {
      const res = await fetch(`${url}/sim/requests/${requestId}/callback`, { method: "POST" });
      return (await res.json()) as SimRequest;
    },
    async stop() {
      process.off("exit", kill);
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(kill, 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// ── the provider service in-process ────────────────────────────────────────────────────

export interface Tokens {
  customer(userId?: string, phoneNumber?: string): Promise<string>;
  admin(): Promise<string>;
}

export interface ProviderHarness {
  url: string;
  config: Config;
  settings: ProviderSettings;
  provider: ProviderProcess;
  client: Client<typeof ProviderService>;
  sim: SimProcess;
  tokens: Tokens;
  /** Verifies the harness's tokens (for peer services started next to the provider). */
  verifier: TokenVerifier;
  /** The voucher service that stores the purchased codes, and a client of it. */
  voucher: VoucherProcess;
  vouchers: Client<typeof VoucherService>;
  nc: NatsConnection;
  /** Starts another replica against the same database and stream (stopped by close()). */
  addReplica(): Promise<ProviderProcess>;
  row(id: string): Promise<CodeRequestRow>;
  /** Waits until the request is in one of `states` (polling the database). */
  waitForState(id: string, states: RequestState[], timeoutMs?: number): Promise<CodeRequestRow>;
  /** Every `code_received` event in this file's stream. */
  codeReceivedEvents(): Promise<CodeReceived[]>;
  /** Posts a callback as the outside provider would. */
  postCallback(id: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }>;
  metrics(): Promise<string>;
  close(): Promise<void>;
}

export const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

export async function startProviderHarness(
  label: string,
  opts: { sim?: Parameters<typeof startSim>[0]; tune?: (s: ProviderSettings) => void } = {},
): Promise<ProviderHarness> {
  const testDb: TestDatabase = await createTestDatabase(`provider_${label}`);
  const events = testEventNames(`provider_${label}`);
  const sim = await startSim(opts.sim);
  const port = await freePort();
  const config: Config = {
    ...loadConfig("provider", {}),
    port,
    databaseUrl: testDb.url,
    natsStream: events.stream,
    natsSubjectPrefix: events.subjectPrefix,
    logLevel: LOG_LEVEL,
    redisKeyPrefix: `vouch-test:provider-${label}:${uniqueSuffix()}:`,
    shutdownGraceMs: 500,
  };
  const settings = loadProviderSettings(config, {});
  // Tests make many requests per user and number; the limits have their own test.
  settings.requestLimits = { perUser: { perMinute: 0, burst: 1 }, perPhoneNumber: { perMinute: 0, burst: 1 } };
  settings.apiUrl = sim.url;
  settings.callbackBaseUrl = `http://127.0.0.1:${port}`;
  settings.sweepIntervalMs = 100;
  settings.retryBackoffMs = [100, 200, 400];
  settings.workerConcurrency = 8;
  opts.tune?.(settings);

  const signer = await createTestTokens({ issuer: ISSUER, audience: AUDIENCE, kid: "provider-test-key" });
  const verifier = signer.verifier;
  const mint = (sub: string, roles: string[], phoneNumber?: string) => signer.sign(sub, roles, phoneNumber ? { phone_number: phoneNumber } : {});
  const tokens: Tokens = {
    customer: (userId = `user-${randomUUID()}`, phone) => mint(userId, ["CUSTOMER"], phone),
    admin: () => mint("admin-1", ["ADMIN"]),
  };

  const provider = await startProvider(config, settings, { verifier });
  let server: RunningServer;
  let voucher: VoucherProcess | undefined;
  let voucherServer: RunningServer;
  try {
    server = await listen(provider.platform, { ...provider.server, verifier });
    voucher = await startVoucher(
      { ...loadConfig("voucher", {}), port: 0, databaseUrl: testDb.url, natsStream: events.stream, natsSubjectPrefix: events.subjectPrefix, redisKeyPrefix: `${config.redisKeyPrefix}voucher:`, logLevel: LOG_LEVEL, shutdownGraceMs: 500 },
      loadVoucherSettings({}),
      { verifier },
    );
    voucherServer = await listen(voucher.platform, { ...voucher.server, verifier });
  } catch (err) {
    await voucher?.platform.close();
    await provider.platform.close();
    throw err;
  }
  const replicas: ProviderProcess[] = [];
  const db = provider.platform.db;
  // The test's own connection: it reads the stream and deletes it after the service stopped.
  const nc = await connectNats(config.natsUrl, createLogger("provider-test", LOG_LEVEL), { name: "provider-test" });
  const url = server.url;

  return {
    url,
    config,
    settings,
    provider,
    client: createClient(ProviderService, createGrpcTransport({ baseUrl: url })),
    sim,
    tokens,
    verifier,
    voucher,
    vouchers: createClient(VoucherService, createGrpcTransport({ baseUrl: voucherServer.url })),
    nc,
    async addReplica() {
      const replica = await startProvider(config, settings, { verifier });
      replicas.push(replica);
      return replica;
    },
    async row(id) {
      const r = await getCodeRequest(db, id);
      assert.ok(r, `code request ${id} exists`);
      return r;
    },
    async waitForState(id, states, timeoutMs = 15_000) {
      let last: CodeRequestRow | undefined;
      try {
        return await waitFor(
          `request ${id} to reach ${states.join(" or ")}`,
          async () => {
            last = await getCodeRequest(db, id);
            return last && states.includes(last.state) ? last : undefined;
          },
          timeoutMs,
        );
      } catch (err) {
        throw new Error(`${(err as Error).message}; it is ${last?.state} (attempts ${last?.attemptCount}, last error ${last?.lastError})`);
      }
    },
    async codeReceivedEvents() {
      const jsm = await nc.jetstreamManager();
      const subject = `${config.natsSubjectPrefix}.provider.code_received`;
      const out: CodeReceived[] = [];
      for (let seq = 1; ; ) {
        let m;
        try {
          // "The next message on this subject from seq": the server's STREAM.MSG.GET takes
          // next_by_subj, which nats.js 2.29 only types for its direct-get API.
          m = await jsm.streams.getMessage(config.natsStream, { seq, next_by_subj: subject } as unknown as { seq: number });
        } catch {
          return out; // no more
        }
        out.push(fromBinary(CodeReceivedSchema, m.data));
        seq = m.seq + 1;
      }
    },
    async postCallback(id, body) {
      const res = await fetch(`${url}/provider/callbacks/${id}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
    },
    metrics: () => fetch(`${url}/metrics`).then((r) => r.text()),
    async close() {
      await server.close();
      await voucherServer.close();
      for (const r of replicas) await r.platform.close();
      await provider.platform.close();
      await voucher!.platform.close();
      await deleteStream(nc, config.natsStream).catch(() => {});
      await nc.close();
      await sim.stop();
      const redis = new Redis(config.redisUrl);
      try {
        const keys = await redis.keys(`${config.redisKeyPrefix}*`);
        if (keys.length) await redis.del(...keys);
      } finally {
        redis.disconnect();
      }
      await testDb.drop();
    },
  };
}

/** Asserts that `call` fails with this code and ErrorInfo reason; returns the error. */
export async function expectError(call: Promise<unknown>, code: Code, reason: string): Promise<ConnectError> {
  const err = await call.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
  assert.equal(Code[err.code], Code[code], err.message);
  assert.equal(err.findDetails(ErrorInfoSchema)[0]?.reason, reason);
  return err;
}

export function retryDelayMs(err: ConnectError): number | undefined {
  const d = err.findDetails(RetryInfoSchema)[0]?.retryDelay;
  return d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : undefined;
}

/** The value of a Prometheus sample line, e.g. `vouch_provider_breaker_state{…,state="open"}`. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[3] ?? "").matchAll(/([a-z_]+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[4]);
  }
  return undefined;
}
