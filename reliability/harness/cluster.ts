// Runs the platform the way production does: every service as its own Node process
// (`node --import tsx services/<name>/main.ts`), two replicas of each against the same
// Postgres, Redis and NATS, plus provider-sim. Replicas keep their port across kill -9 and
// restart, so a scenario can take one down mid-flow and bring it back where clients expect it.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { startBalancer, type Balancer } from "./balancer.js";
import { stopProcess } from "../../services/kit/testing.js";
import { removeOnAbruptExit, track } from "./infra.js";
import { freePort, waitFor } from "./util.js";
import { serviceNodeArgs } from "../../services/kit/launch.js";

export type ServiceKind = "auth" | "voucher" | "provider" | "promotion";
export const ALL_SERVICES: readonly ServiceKind[] = ["auth", "voucher", "provider", "promotion"];

export interface Backing {
  databaseUrl: string;
  redisUrl: string;
  natsUrl: string;
  stream: string;
  subjectPrefix: string;
  redisKeyPrefix: string;
}

export interface ClusterOptions {
  backing: Backing;
  /** Replicas per service (default 2 each; 0 leaves a service out). */
  replicas?: Partial<Record<ServiceKind, number>>;
  /** Start provider-sim with this behaviour (`{default, byPhoneNumber}`); undefined: no sim. */
  sim?: unknown;
  /** Extra environment for every service process. */
  env?: Record<string, string>;
  /** The bootstrap admin's password (auth creates the admin on first start). */
  adminPassword?: string;
}

export interface Replica {
  /** e.g. `voucher-a`. */
  name: string;
  service: ServiceKind | "provider-sim";
  port: number;
  url: string;
  pid(): number | undefined;
  alive(): boolean;
  /** Starts the process (again) on its port and waits until /readyz answers 200. */
  start(): Promise<void>;
  /** kill -9, and waits for the exit. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT: the process stays, but stops answering (a stuck replica, a GC pause). */
  pause(): void;
  resume(): void;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** The tail of the replica's log file. */
  logTail(lines?: number): string;
  /** How many times the process exited without being asked to. */
  crashes(): number;
}

export interface Cluster {
  dir: string;
  adminPassword: string;
  replicas: Record<ServiceKind, Replica[]>;
  sim?: Replica;
  /** A typed gRPC (HTTP/2) client of one replica. */
  client<S extends DescService>(service: S, replica: Replica): Client<S>;
  /** One client per replica of `kind`, in replica order. */
  clients<S extends DescService>(service: S, kind: ServiceKind): Client<S>[];
  /** Every replica's /metrics text, concatenated. */
  metrics(kind: ServiceKind): Promise<string>;
  /** Replicas that died on their own (a crash is a finding of its own). */
  unexpectedExits(): string[];
  dispose(): Promise<void>;
}

const INHERITED_PREFIXES = /^(AUTH|VOUCHER|PROVIDER|PROMOTION|EDGE|DATABASE|REDIS|NATS|JWT|JWKS|SMS|DB_|PORT$|HOST$|LOG_LEVEL$|SHUTDOWN)/;

/** The parent's environment minus anything that configures a Vouch process. */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !INHERITED_PREFIXES.test(k)) env[k] = v;
  return env;
}

const letters = "abcdefghij";

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), "vouch-rel-cluster-"));
  removeOnAbruptExit(dir);
  const adminPassword = opts.adminPassword ?? "reliability admin passphrase 42";
  const counts: Record<ServiceKind, number> = { auth: 2, voucher: 2, provider: 2, promotion: 2, ...opts.replicas };
  const ports: Record<ServiceKind, number[]> = { auth: [], voucher: [], provider: [], promotion: [] };
  for (const kind of ALL_SERVICES) for (let i = 0; i < counts[kind]; i++) ports[kind].push(await freePort());
  const simPort = opts.sim === undefined ? undefined : await freePort();
  // The provider's callback URL is an ingress over its replicas, as in production.
  const callbacks: Balancer | undefined = ports.provider.length ? await startBalancer(() => ports.provider) : undefined;
  const url = (port: number) => `http://127.0.0.1:${port}`;
  // Replica i talks to replica i of its peers (or the first when a peer has fewer), so
  // taking one replica down cuts half of the traffic that crosses it, not all of it.
  const peer = (kind: ServiceKind, i: number) => (ports[kind].length ? url(ports[kind][i % ports[kind].length]) : url(1));
  const unexpected: string[] = [];
  const transports = new Map<string, Transport>();

  function replica(name: string, service: Replica["service"], entry: string, port: number, env: Record<string, string>): Replica {
    let child: ChildProcess | undefined;
    let starting: Promise<void> | undefined;
    let crashes = 0;
    const logFile = join(dir, `${name}.log`);
    async function launch() {
      const fd = openSync(logFile, "a");
      const proc = spawn(process.execPath, serviceNodeArgs(entry), { env: { ...baseEnv(), ...env }, stdio: ["ignore", fd, fd] });
      closeSync(fd);
      track(proc);
      child = proc;
      let expected = false;
      (proc as ChildProcess & { expectExit?: () => void }).expectExit = () => (expected = true);
      proc.once("exit", (code, signal) => {
        if (!expected) {
          crashes++;
          unexpected.push(`${name} exited (code ${code}, signal ${signal})`);
        }
      });
      await waitFor(`${name} to be ready`, async () => {
        if (proc.exitCode !== null) throw new Error(`${name} exited with ${proc.exitCode} while starting:\n${r.logTail(30)}`);
        return fetch(`${r.url}/readyz`, { signal: AbortSignal.timeout(2_000) }).then((res) => res.ok, () => false);
      }, 120_000, 200);
    }
    const r: Replica = {
      name,
      service,
      port,
      url: url(port),
      pid: () => child?.pid,
      alive: () => child !== undefined && child.exitCode === null && child.signalCode === null,
      start() {
        if (starting) return starting;
        if (r.alive()) return Promise.resolve();
        starting = launch().finally(() => (starting = undefined));
        return starting;
      },
      async kill() {
        const proc = child;
        if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
        (proc as ChildProcess & { expectExit?: () => void }).expectExit?.();
        const exited = new Promise((res) => proc.once("exit", res));
        proc.kill("SIGKILL");
        await exited;
        transports.delete(r.url);
      },
      pause: () => void child?.kill("SIGSTOP"),
      resume: () => void child?.kill("SIGCONT"),
      async stop(graceMs = 10_000) {
        const proc = child;
        if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
        (proc as ChildProcess & { expectExit?: () => void }).expectExit?.();
        proc.kill("SIGCONT"); // a paused replica cannot handle its SIGTERM
        await stopProcess(proc, graceMs);
      },
      logTail(lines = 40) {
        try {
          return readFileSync(logFile, "utf8").split("\n").slice(-lines).join("\n");
        } catch {
          return "";
        }
      },
      crashes: () => crashes,
    };
    return r;
  }

  const b = opts.backing;
  const common = (i: number): Record<string, string> => ({
    DATABASE_URL: b.databaseUrl,
    REDIS_URL: b.redisUrl,
    REDIS_KEY_PREFIX: b.redisKeyPrefix,
    NATS_URL: b.natsUrl,
    NATS_STREAM: b.stream,
    NATS_SUBJECT_PREFIX: b.subjectPrefix,
    HOST: "127.0.0.1",
    LOG_LEVEL: process.env.RELIABILITY_LOG_LEVEL ?? "warn",
    SHUTDOWN_GRACE_MS: "2000",
    AUTH_URL: peer("auth", i),
    VOUCHER_URL: peer("voucher", i),
    PROMOTION_URL: peer("promotion", i),
    PROVIDER_URL: peer("provider", i),
    ...opts.env,
  });

  const replicas: Record<ServiceKind, Replica[]> = { auth: [], voucher: [], provider: [], promotion: [] };
  for (const kind of ALL_SERVICES) {
    ports[kind].forEach((port, i) => {
      const env: Record<string, string> = { ...common(i), PORT: String(port), [`${kind.toUpperCase()}_PORT`]: String(port) };
      if (kind === "auth") env.AUTH_ADMIN_PASSWORD = adminPassword;
      if (kind === "provider") {
        env.PROVIDER_URL = url(port);
        env.PROVIDER_CALLBACK_BASE_URL = callbacks!.url;
        if (simPort) env.PROVIDER_API_URL = url(simPort);
      }
      replicas[kind].push(replica(`${kind}-${letters[i]}`, kind, `services/${kind}/main.ts`, port, env));
    });
  }
  const sim = simPort
    ? replica("provider-sim", "provider-sim", "services/provider-sim/main.ts", simPort, {
        HOST: "127.0.0.1",
        PROVIDER_SIM_PORT: String(simPort),
        LOG_LEVEL: process.env.RELIABILITY_LOG_LEVEL ?? "warn",
        PROVIDER_SIM_BEHAVIOUR: JSON.stringify(opts.sim),
      })
    : undefined;

  const all = [...ALL_SERVICES.flatMap((k) => replicas[k]), ...(sim ? [sim] : [])];
  const cluster: Cluster = {
    dir,
    adminPassword,
    replicas,
    sim,
    client(service, r) {
      let transport = transports.get(r.url);
      if (!transport) {
        transport = createGrpcTransport({ baseUrl: r.url, defaultTimeoutMs: 30_000 });
        transports.set(r.url, transport);
      }
      return createClient(service, transport);
    },
    clients: (service, kind) => replicas[kind].map((r) => cluster.client(service, r)),
    async metrics(kind) {
      const texts = await Promise.all(replicas[kind].map((r) => fetch(`${r.url}/metrics`).then((res) => res.text(), () => "")));
      return texts.join("\n");
    },
    unexpectedExits: () => [...unexpected],
    async dispose() {
      await Promise.all(all.map((r) => r.stop(5_000)));
      await callbacks?.close();
      if (!process.env.RELIABILITY_KEEP_LOGS) rmSync(dir, { recursive: true, force: true });
      removeOnAbruptExit(dir, false);
    },
  };
  try {
    // The first auth replica creates the admin and the first signing key alone; the rest
    // then start together (their migrations serialise on Postgres advisory locks).
    if (replicas.auth[0]) await replicas.auth[0].start();
    await Promise.all(all.filter((r) => r !== replicas.auth[0]).map((r) => r.start()));
  } catch (err) {
    await cluster.dispose().catch(() => {});
    throw err;
  }
  return cluster;
}

/** Sums the samples of a Prometheus counter whose labels contain every `match` pair. */
export function metricSum(text: string, name: string, match: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(match).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}
