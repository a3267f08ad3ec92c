// What every benchmark needs: an isolated place to run (its own database, JetStream stream,
// Redis prefix, and a JWKS it signs tokens with), service processes started on spare
// loopback ports, a closed-loop load generator bounded in time and requests, and the
// result rows `npm run bench` gathers into one table.
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { appendFileSync, readdirSync, readFileSync } from "node:fs";
import * as http from "node:http";
import { SignJWT, exportJWK, generateKeyPair, type JWK } from "jose";
import { connectNats } from "../../services/kit/events/index.js";
import { serviceNodeArgs } from "../../services/kit/launch.js";
import { createLogger } from "../../services/kit/log.js";
import { createRedis } from "../../services/kit/redis.js";
import { createTestDatabase, deleteStream, freePort, stopProcess, testEventNames, uniqueSuffix, type TestDatabase } from "../../services/kit/testing.js";

// ── options ──────────────────────────────────────────────────────────────────────────────

/**
 * The knobs every script honours, from the environment `npm run bench` sets (or `--quick` on
 * a script's own command line): every phase is bounded in time (`seconds`) and in calls
 * (`maxCalls`), and the sizes shrink in a quick run.
 */
export const options = (() => {
  const quick = process.env.BENCH_QUICK === "1" || process.argv.includes("--quick");
  const int = (name: string, full: number, short: number) => {
    const raw = process.env[name];
    const value = raw === undefined || raw === "" ? (quick ? short : full) : Number(raw);
    if (!(Number.isFinite(value) && value > 0)) throw new Error(`${name} must be a positive number, got "${raw}"`);
    return value;
  };
  return {
    quick,
    /** Seconds per measured phase (BENCH_SECONDS). */
    seconds: (full: number) => int("BENCH_SECONDS", full, Math.min(full, 2)),
    /** Requests of a request-bounded phase, e.g. the provider flow (BENCH_REQUESTS). */
    requests: (full: number) => int("BENCH_REQUESTS", full, Math.min(full, 300)),
    /** Codes of the generation job and of the COPY ceiling (BENCH_GENERATE). */
    generate: int("BENCH_GENERATE", 1_000_000, 100_000),
    /** First logins per phase of the storm (BENCH_LOGINS). */
    logins: int("BENCH_LOGINS", 10_000, 1_000),
    /** Upper bound on the calls of any one time-bounded phase (BENCH_MAX_CALLS). */
    maxCalls: int("BENCH_MAX_CALLS", 1_000_000, 1_000_000),
  };
})();

// ── results ──────────────────────────────────────────────────────────────────────────────

/** A goal that is not a ratio (a rate, a time, an exact count), already judged by the script. */
export interface Target {
  /** e.g. "last login → all 100 vouchers issued ≤ 2000 ms". */
  goal: string;
  /** What was measured, e.g. "840 ms". */
  value: string;
  met: boolean;
}

/** One line of the bench table; `npm run bench` collects them from every script. */
export interface BenchRow {
  /** Stable key another row's `vs` can name, e.g. "ceiling.pg-update" or "redeem". */
  id: string;
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
  /** Peak resident memory of the service under test during the phase. */
  rssMiB?: number;
  /** Id of the row (a ceiling, or a baseline path) measured in the same run that this row's rate is divided by. */
  vs?: string;
  /** The issue's goal for `rate ÷ vs.rate` (at least). */
  goal?: number;
  /** Goals that are not ratios. */
  targets?: Target[];
  /** Facts worth a line under the table (in-script ratios, collisions, CPU per call…). */
  notes?: string[];
  /** Filled by `resolveRatios`: rate ÷ the rate of `vs`, and the name and rate of `vs`. */
  ratio?: number;
  ceiling?: string;
}

const fmtRate = (n: number) => Math.round(n).toLocaleString("en-US");

/**
 * Prints a row and, when run under `npm run bench` (BENCH_RESULT_FILE set), appends it as one
 * JSON line for the summary table.
 */
export function report(row: BenchRow): void {
  const latency = row.p50Ms === undefined ? "" : `  p50 ${row.p50Ms.toFixed(2)} ms  p95 ${row.p95Ms?.toFixed(2)} ms  p99 ${row.p99Ms?.toFixed(2)} ms`;
  const vs = row.vs ? `  (÷ ${row.vs}${row.goal ? `, goal ≥ ${row.goal}` : ""})` : "";
  const rss = row.rssMiB === undefined || Number.isNaN(row.rssMiB) ? "" : `  RSS ${row.rssMiB.toFixed(0)} MiB`;
  console.log(`▸ ${row.path} [${row.via}]: ${fmtRate(row.rate)} ${row.unit}, ${row.ok} ok, ${row.errors} errors${latency}${rss}${vs}`);
  for (const t of row.targets ?? []) console.log(`    ${t.met ? "✓" : "✗"} ${t.goal}: ${t.value}`);
  for (const n of row.notes ?? []) console.log(`    ${n}`);
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

/** Fills `ratio` and `ceiling` of every row whose `vs` names a row of the same run. */
export function resolveRatios(rows: BenchRow[]): BenchRow[] {
  const byId = new Map(rows.map((r) => [r.id, r]));
  return rows.map((r) => {
    const base = r.vs ? byId.get(r.vs) : undefined;
    if (!base) return { ...r, ratio: undefined, ceiling: r.vs ? `${r.vs} (not measured in this run)` : undefined };
    return { ...r, ratio: r.rate / base.rate, ceiling: `${base.path} (${fmtRate(base.rate)} ${base.unit})` };
  });
}

/** Whether a row meets its goals: true, false, or undefined when it has none (or its ceiling is missing). */
export function goalsMet(r: BenchRow): boolean | undefined {
  const verdicts: boolean[] = (r.targets ?? []).map((t) => t.met);
  if (r.goal !== undefined) {
    if (r.ratio === undefined) return undefined;
    verdicts.push(r.ratio >= r.goal);
  }
  return verdicts.length ? verdicts.every(Boolean) : undefined;
}

// ── load ─────────────────────────────────────────────────────────────────────────────────

export interface LoadOptions {
  concurrency: number;
  seconds: number;
  /** Stop after this many calls even if time is left (default `options.maxCalls`). */
  maxCalls?: number;
}

export interface LoadResult {
  rate: number;
  ok: number;
  errors: number;
  seconds: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  /** Sorted latencies of the successful calls, ms. */
  latencies: number[];
  firstError?: string;
}

export const percentile = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);

function loadResult(latencies: number[], errors: number, seconds: number, firstError?: string): LoadResult {
  latencies.sort((a, b) => a - b);
  return {
    rate: latencies.length / seconds,
    ok: latencies.length,
    errors,
    seconds,
    p50Ms: percentile(latencies, 50),
    p95Ms: percentile(latencies, 95),
    p99Ms: percentile(latencies, 99),
    latencies,
    firstError,
  };
}

/**
 * `concurrency` closed loops calling `call(worker, i)` until the time or the call budget runs
 * out; `i` counts the calls of all loops (0, 1, 2, … once each).
 */
export async function load(opts: LoadOptions, call: (worker: number, i: number) => Promise<unknown>): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let issued = 0;
  let firstError: string | undefined;
  const maxCalls = opts.maxCalls ?? options.maxCalls;
  const started = performance.now();
  const end = started + opts.seconds * 1000;
  await Promise.all(
    Array.from({ length: opts.concurrency }, async (_, w) => {
      while (performance.now() < end && issued < maxCalls) {
        const i = issued++;
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
  return loadResult(latencies, errors, (performance.now() - started) / 1000, firstError);
}

/** Several phases of the same load as one result (rounds that alternate with another load). */
export function mergeLoads(results: LoadResult[]): LoadResult {
  return loadResult(
    results.flatMap((r) => r.latencies),
    results.reduce((s, r) => s + r.errors, 0),
    results.reduce((s, r) => s + r.seconds, 0),
    results.find((r) => r.firstError)?.firstError,
  );
}

/** A row from a load result. */
export function row(id: string, path: string, via: string, r: LoadResult, extra: Partial<BenchRow> = {}): BenchRow {
  if (r.firstError) console.error(`${path}: first error: ${r.firstError}`);
  return { id, path, via, rate: r.rate, unit: "ops/s", ok: r.ok, errors: r.errors, p50Ms: r.p50Ms, p95Ms: r.p95Ms, p99Ms: r.p99Ms, ...extra };
}

/** Latency percentiles of a list of durations (ms), e.g. request → delivered times read from the database. */
export function latencyStats(values: number[]): Pick<BenchRow, "p50Ms" | "p95Ms" | "p99Ms"> {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50Ms: percentile(sorted, 50), p95Ms: percentile(sorted, 95), p99Ms: percentile(sorted, 99) };
}

/** Polls `probe` until it returns true; fails with `what` after `timeoutMs`. */
export async function poll(what: string, probe: () => Promise<boolean>, timeoutMs = 120_000, everyMs = 25): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
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

/** Samples the summed RSS of `pids` every `everyMs` until `stop()`, which returns the peak (MiB). */
export function sampleRss(pids: (number | undefined)[], everyMs = 250): { stop(): number } {
  const now = () => pids.reduce<number>((s, pid) => s + (rssMiB(pid) || 0), 0);
  let peak = now();
  const timer = setInterval(() => (peak = Math.max(peak, now())), everyMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, now());
    },
  };
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** utime + stime of a process so far, in seconds (/proc/<pid>/stat fields 14 and 15); NaN when gone. */
export function cpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/** CPU seconds so far of every process whose command line matches (Postgres backends, nats-server…). */
export function cpuSecondsMatching(match: (cmdline: string, pid: number) => boolean): number {
  let total = 0;
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (!match(readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " "), Number(pid))) continue;
      total += cpuSeconds(Number(pid)) || 0;
    } catch {
      // gone
    }
  }
  return total;
}

/** CPU seconds per thread name of one process (main = the event loop; libuv pool and V8 helpers by name). */
export function threadCpu(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const name = tid === String(pid) ? "main" : stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out[name] = (out[name] ?? 0) + (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
    } catch {
      // gone
    }
  }
  return out;
}

/** Command-line matchers for the shared local servers, for `cpuSecondsMatching`. */
export const isPostgres = (cmd: string) => cmd.startsWith("postgres");
export const isNats = (cmd: string) => cmd.includes("nats-server");
export const isRedis = (cmd: string) => cmd.startsWith("redis-server");

/** CPU seconds per named group (a process or a group of them). */
export type CpuSeconds = Record<string, number>;

/**
 * CPU seconds per named group (a pid or a command-line matcher), read now; `since(before)`
 * gives the difference, `measure(run)` the CPU each group spent while `run` ran.
 */
export function cpuMeter(groups: Record<string, number | ((cmdline: string, pid: number) => boolean)>) {
  const now = (): CpuSeconds =>
    Object.fromEntries(
      Object.entries(groups).map(([name, g]) => [name, typeof g === "number" ? (g === process.pid ? (process.cpuUsage().user + process.cpuUsage().system) / 1e6 : cpuSeconds(g)) : cpuSecondsMatching(g)]),
    );
  const since = (before: CpuSeconds): CpuSeconds => Object.fromEntries(Object.entries(now()).map(([k, v]) => [k, v - before[k]]));
  return {
    now,
    since,
    async measure<T>(run: () => Promise<T>): Promise<{ result: T; cpu: CpuSeconds }> {
      const before = now();
      const result = await run();
      return { result, cpu: since(before) };
    },
  };
}

/** Per-group sums of several phases' CPU seconds (the groups of the first). */
export function sumCpu(phases: CpuSeconds[]): CpuSeconds {
  return Object.fromEntries(Object.keys(phases[0]).map((k) => [k, phases.reduce((s, p) => s + (p[k] ?? 0), 0)]));
}

/** "auth 20.3, postgres 4.9, …": CPU ms per operation of each group, leaving out `skip`. */
export function cpuMsPer(cpu: CpuSeconds, operations: number, digits = 1, skip: string[] = []): string {
  return Object.entries(cpu)
    .filter(([k]) => !skip.includes(k))
    .map(([k, v]) => `${k} ${((v * 1000) / Math.max(1, operations)).toFixed(digits)}`)
    .join(", ");
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
  /** Starts `<entry> [args]` as a service process (kit/launch.ts) on a spare port and waits for /readyz. */
  start(entry: string, opts?: { args?: string[]; env?: Record<string, string>; nodeArgs?: string[] }): Promise<StartedProcess>;
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
      const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), ...serviceNodeArgs(entry), ...(opts.args ?? [])], {
        env: { ...process.env, ...env, ...opts.env, PORT: String(port) },
        stdio: ["ignore", "inherit", "inherit"],
      });
      children.push(child);
      const url = `http://127.0.0.1:${port}`;
      await waitReady(url, child);
      return { url, port, child };
    },
    async dispose() {
      await Promise.all(children.map((c) => stopProcess(c, 10_000)));
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
