// What every benchmark needs: an isolated place to run (its own database, JetStream stream,
// Redis prefix, and a JWKS it signs tokens with), service processes started on spare
// loopback ports, a closed-loop load generator bounded in time and requests, and the
// result rows `npm run bench` gathers into one table.
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { appendFileSync, readFileSync } from "node:fs";
import * as http from "node:http";
import { SignJWT, exportJWK, generateKeyPair, type JWK } from "jose";
import { connectNats } from "../../services/kit/events/index.js";
import { createLogger } from "../../services/kit/log.js";
import { createRedis } from "../../services/kit/redis.js";
import { createTestDatabase, deleteStream, freePort, testEventNames, uniqueSuffix, type TestDatabase } from "../../services/kit/testing.js";

// ── results ──────────────────────────────────────────────────────────────────────────────

/** One line of the bench table; `npm run bench` collects them from every script. */
export interface BenchRow {
  /** What was measured, e.g. "redeem" or "ceiling: pg conditional UPDATE". */
  path: string;
  /** How it was driven, e.g. "gRPC h2, 32 concurrent". */
  via: string;
  /** Operations per second. */
  rate: number;
  unit: string;
  ok: number;
  errors: number;
  p50Ms?: number;
  p95Ms?: number;
  p99Ms?: number;
  /** Resident memory of the service under test after the run. */
  rssMiB?: number;
  /** The ceiling this path is compared with, and the ratio rate ÷ ceiling rate. */
  ceiling?: string;
  ratio?: number;
  goal?: number;
}

/**
 * Prints a row and, when run under `npm run bench` (BENCH_RESULT_FILE set), appends it as one
 * JSON line for the summary table.
 */
export function report(row: BenchRow): void {
  const latency = row.p50Ms === undefined ? "" : `  p50 ${row.p50Ms.toFixed(2)} ms  p95 ${row.p95Ms?.toFixed(2)} ms  p99 ${row.p99Ms?.toFixed(2)} ms`;
  const ratio = row.ratio === undefined ? "" : `  ratio ${row.ratio.toFixed(2)} of ${row.ceiling}${row.goal ? ` (goal ≥ ${row.goal})` : ""}`;
  console.log(`${row.path} [${row.via}]: ${Math.round(row.rate).toLocaleString("en-US")} ${row.unit}, ${row.ok} ok, ${row.errors} errors${latency}${ratio}`);
  const file = process.env.BENCH_RESULT_FILE;
  if (file) appendFileSync(file, `${JSON.stringify(row)}\n`);
}

export function readRows(file: string): BenchRow[] {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return [];
  }
  return text.split("\n").filter(Boolean).map((line) => JSON.parse(line) as BenchRow);
}

/** The ratio of a path to its ceiling, filled into the row. */
export function against(row: BenchRow, ceiling: BenchRow, goal?: number): BenchRow {
  return { ...row, ceiling: `${ceiling.path} (${Math.round(ceiling.rate).toLocaleString("en-US")}/s)`, ratio: row.rate / ceiling.rate, goal };
}

// ── load ─────────────────────────────────────────────────────────────────────────────────

export interface LoadOptions {
  concurrency: number;
  seconds: number;
  /** Stop after this many calls even if time is left. */
  maxCalls?: number;
}

export interface LoadResult {
  rate: number;
  ok: number;
  errors: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  firstError?: string;
}

const percentile = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);

/** `concurrency` closed loops calling `call(worker, i)` until the time or call budget runs out. */
export async function load(opts: LoadOptions, call: (worker: number, i: number) => Promise<unknown>): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let issued = 0;
  let firstError: string | undefined;
  const maxCalls = opts.maxCalls ?? Infinity;
  const started = performance.now();
  const end = started + opts.seconds * 1000;
  await Promise.all(
    Array.from({ length: opts.concurrency }, async (_, w) => {
      for (let i = 0; performance.now() < end && issued < maxCalls; i++) {
        issued++;
        const t = performance.now();
        try {
          await call(w, i);
          latencies.push(performance.now() - t);
        } catch (err) {
          errors++;
          firstError ??= String(err);
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    rate: latencies.length / elapsed,
    ok: latencies.length,
    errors,
    p50Ms: percentile(latencies, 50),
    p95Ms: percentile(latencies, 95),
    p99Ms: percentile(latencies, 99),
    firstError,
  };
}

/** A row from a load result. */
export function row(path: string, via: string, r: LoadResult, extra: Partial<BenchRow> = {}): BenchRow {
  if (r.firstError) console.error(`${path}: first error: ${r.firstError}`);
  return { path, via, rate: r.rate, unit: "ops/s", ok: r.ok, errors: r.errors, p50Ms: r.p50Ms, p95Ms: r.p95Ms, p99Ms: r.p99Ms, ...extra };
}

/**
 * Connect unary calls over HTTP/1.1 (JSON), from a keep-alive agent with one socket per
 * loop: the browser-style protocol, without a client library in the way.
 */
export function connectJsonCaller(baseUrl: string, concurrency: number) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const url = new URL(baseUrl);
  return {
    call(procedure: string, body: unknown, headers: Record<string, string> = {}): Promise<unknown> {
      const payload = JSON.stringify(body);
      return new Promise((resolve, reject) => {
        const req = http.request(
          { agent, host: url.hostname, port: url.port, method: "POST", path: `/${procedure}`, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload), ...headers } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => {
              const text = Buffer.concat(chunks).toString("utf8");
              if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
              else resolve(text ? JSON.parse(text) : {});
            });
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end(payload);
      });
    },
    close: () => agent.destroy(),
  };
}

// ── processes ────────────────────────────────────────────────────────────────────────────

/** Resident set size of a process, in MiB (Linux /proc). */
export function rssMiB(pid: number | undefined): number {
  if (!pid) return NaN;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

export async function waitReady(url: string, child: ChildProcess, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${url}: process exited with ${child.exitCode}`);
    if (await fetch(`${url}/readyz`).then((r) => r.ok, () => false)) return;
    if (Date.now() > deadline) throw new Error(`${url} not ready after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export interface StartedProcess {
  url: string;
  port: number;
  child: ChildProcess;
}

export interface BenchEnvironment {
  db: TestDatabase;
  stream: string;
  subjectPrefix: string;
  redisPrefix: string;
  jwksUrl: string;
  issuer: string;
  audience: string;
  /** The environment every service of this bench runs with (PORT is added per process). */
  env: Record<string, string>;
  /** An access token signed with the bench's JWKS, as auth would sign it. */
  token(subject: string, roles?: string[]): Promise<string>;
  /** `{ headers: { authorization } }` for a client call. */
  auth(subject: string, roles?: string[]): Promise<{ headers: { authorization: string } }>;
  /** Starts `node --import tsx <entry> [args]` on a spare port and waits for /readyz. */
  start(entry: string, opts?: { args?: string[]; env?: Record<string, string> }): Promise<StartedProcess>;
  /** Stops every started process and removes the database, stream and Redis keys. */
  dispose(): Promise<void>;
}

/** A database, stream, Redis prefix and token issuer that belong to this bench run alone. */
export async function benchEnvironment(label: string): Promise<BenchEnvironment> {
  const db = await createTestDatabase(`bench_${label}`);
  const { stream, subjectPrefix } = testEventNames(`bench_${label}`);
  const redisPrefix = `vouch-bench:${uniqueSuffix()}:`;
  const issuer = "https://auth.bench";
  const audience = "vouch-bench";
  const pair = await generateKeyPair("EdDSA", { extractable: true });
  const jwk: JWK = { ...(await exportJWK(pair.publicKey)), kid: "bench", alg: "EdDSA", use: "sig" };
  const jwks = http.createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] })));
  await new Promise<void>((r) => jwks.listen(0, "127.0.0.1", r));
  const jwksUrl = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks.json`;
  const children: ChildProcess[] = [];
  const env: Record<string, string> = {
    DATABASE_URL: db.url,
    REDIS_KEY_PREFIX: redisPrefix,
    NATS_STREAM: stream,
    NATS_SUBJECT_PREFIX: subjectPrefix,
    JWKS_URL: jwksUrl,
    JWT_ISSUER: issuer,
    JWT_AUDIENCE: audience,
    LOG_LEVEL: process.env.LOG_LEVEL ?? "warn",
  };
  const token = (subject: string, roles = ["CUSTOMER"]) =>
    new SignJWT({ roles })
      .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid: "bench" })
      .setSubject(subject)
      .setJti(randomUUID())
      .setIssuedAt()
      .setIssuer(issuer)
      .setAudience(audience)
      .setExpirationTime("30m")
      .sign(pair.privateKey);

  return {
    db,
    stream,
    subjectPrefix,
    redisPrefix,
    jwksUrl,
    issuer,
    audience,
    env,
    token,
    auth: async (subject, roles) => ({ headers: { authorization: `Bearer ${await token(subject, roles)}` } }),
    async start(entry, opts = {}) {
      const port = await freePort();
      const child = spawn(process.execPath, ["--import", "tsx", entry, ...(opts.args ?? [])], {
        env: { ...process.env, ...env, ...opts.env, PORT: String(port) },
        stdio: ["ignore", "inherit", "inherit"],
      });
      children.push(child);
      const url = `http://127.0.0.1:${port}`;
      await waitReady(url, child);
      return { url, port, child };
    },
    async dispose() {
      for (const child of children) if (child.exitCode === null) child.kill("SIGTERM");
      await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once("exit", r)) : undefined)));
      jwks.close();
      const log = createLogger("bench", "silent");
      const nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", log);
      await deleteStream(nc, stream).catch(() => {});
      await nc.close();
      const redis = createRedis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", { keyPrefix: "", log, name: "bench-cleanup" });
      const keys = await redis.keys(`${redisPrefix}*`);
      if (keys.length) await redis.del(...keys);
      await redis.quit();
      await db.drop();
    },
  };
}
