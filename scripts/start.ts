// `npm start`: the whole platform on one machine. Makes sure Postgres, Redis and NATS are
// reachable (starting local ones where it can), creates the database, then runs every
// service as its own process (nothing shares memory, exactly as in production) and stops
// them all on Ctrl-C.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import * as net from "node:net";
import { loadConfig, DEFAULT_PORTS, type ServiceName } from "../services/kit/config.js";
import { ensureDatabase } from "../services/kit/db.js";
import { serviceNodeArgs } from "../services/kit/launch.js";

const SERVICES: ServiceName[] = ["auth", "voucher", "promotion", "provider", "provider-sim", "edge"];
const config = loadConfig("edge");

interface Dependency {
  name: string;
  url: string;
  /** How a person starts it by hand on this kind of machine. */
  howToStart: string;
  /** Starts a local instance when the binary is here; undefined when we cannot. */
  tryStart?: () => boolean;
}

function hostPort(url: string, defaultPort: number): [string, number] {
  const u = new URL(url);
  return [u.hostname.replace(/^\[|\]$/g, ""), Number(u.port || defaultPort)];
}

function reachable(url: string, defaultPort: number, timeoutMs = 1000): Promise<boolean> {
  const [host, port] = hostPort(url, defaultPort);
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => { socket.destroy(); resolve(ok); };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

const onPath = (bin: string) => spawnSync("sh", ["-c", `command -v ${bin}`]).status === 0;
const run = (cmd: string) => spawnSync("sh", ["-c", cmd], { stdio: "inherit" }).status === 0;

const dependencies: [Dependency, number][] = [
  [{
    name: "PostgreSQL",
    url: config.databaseUrl,
    howToStart: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   (or: docker compose up -d postgres)",
    tryStart: () => {
      if (!existsSync("/etc/postgresql") || !onPath("pg_ctlcluster")) return false;
      const version = readdirSync("/etc/postgresql")[0];
      return version !== undefined && run(`pg_ctlcluster --skip-systemctl-redirect ${version} main start`);
    },
  }, 5432],
  [{
    name: "Redis",
    url: config.redisUrl,
    howToStart: 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no   (or: docker compose up -d redis)',
    tryStart: () => onPath("redis-server") && run('redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'),
  }, 6379],
  [{
    name: "NATS (JetStream)",
    url: config.natsUrl,
    howToStart: "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server   (or: docker compose up -d nats)",
    tryStart: () => {
      const bin = ["nats-server", "/usr/sbin/nats-server"].find((b) => b.includes("/") ? existsSync(b) : onPath(b));
      if (!bin) return false;
      const child = spawn(bin, ["-a", "127.0.0.1", "-p", "4222", "-js", "-sd", ".vouch/nats"], { detached: true, stdio: "ignore" });
      child.unref();
      return true;
    },
  }, 4222],
];

async function ensureDependencies() {
  const missing: Dependency[] = [];
  for (const [dep, port] of dependencies) {
    if (await reachable(dep.url, port)) continue;
    console.log(`[start] ${dep.name} is not reachable at ${dep.url}; trying to start a local one…`);
    if (dep.tryStart?.()) {
      for (let i = 0; i < 50 && !(await reachable(dep.url, port)); i++) await new Promise((r) => setTimeout(r, 200));
    }
    if (!(await reachable(dep.url, port))) missing.push(dep);
  }
  if (missing.length > 0) {
    console.error("\n[start] cannot start Vouch: these dependencies are not reachable:");
    for (const dep of missing) console.error(`  - ${dep.name} at ${dep.url}\n      start it with: ${dep.howToStart}`);
    console.error("  (set DATABASE_URL, REDIS_URL or NATS_URL to point elsewhere)\n");
    process.exit(1);
  }
}

const colors = [36, 33, 35, 32, 34, 31];
function prefixLines(name: string, color: number, stream: NodeJS.ReadableStream, out: NodeJS.WriteStream) {
  let buffered = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) out.write(`\x1b[${color}m${name.padEnd(10)}\x1b[0m ${line}\n`);
  });
}

async function waitHealthy(port: number, child: ChildProcess, timeoutMs = 60_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && child.exitCode === null) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (res.ok) return true;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

/** The edge serves the console from web/dist: build it once when it is missing (`npm run build` rebuilds). */
function ensureConsoleBuild() {
  if (existsSync("web/dist/index.html")) return;
  if (!existsSync("node_modules/vite/bin/vite.js")) {
    console.warn("[start] web/dist is missing and vite is not installed (npm ci without --omit=dev builds it): the console will not be served");
    return;
  }
  console.log("[start] building the console (web/dist)…");
  const built = spawnSync(process.execPath, ["node_modules/vite/bin/vite.js", "build", "--config", "web/vite.config.ts", "--logLevel", "warn"], { stdio: "inherit" });
  if (built.status !== 0) console.warn("[start] the console build failed: the edge will answer 503 at /");
}

async function main() {
  const started = Date.now();
  await ensureDependencies();
  await ensureDatabase(config.databaseUrl);
  ensureConsoleBuild();

  const children = new Map<ServiceName, ChildProcess>();
  let stopping = false;
  const stopAll = (code: number) => {
    if (stopping) return;
    stopping = true;
    console.log("[start] stopping all services…");
    for (const child of children.values()) child.kill("SIGTERM");
    const force = setTimeout(() => { for (const c of children.values()) c.kill("SIGKILL"); }, 15_000);
    force.unref();
    Promise.all([...children.values()].map((c) => c.exitCode !== null ? null : new Promise((r) => c.once("exit", r))))
      .then(() => process.exit(code));
  };
  process.on("SIGINT", () => stopAll(0));
  process.on("SIGTERM", () => stopAll(0));

  SERVICES.forEach((name, i) => {
    const child = spawn(process.execPath, serviceNodeArgs(`services/${name}/main.ts`), {
      // Browsers reach auth through the edge, which sets x-forwarded-for: without trusting it
      // every login would count against the edge's own address in the per-address throttle.
      env: name === "auth" ? { ...process.env, TRUST_FORWARDED_FOR: "true" } : process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    prefixLines(name, colors[i % colors.length], child.stdout!, process.stdout);
    prefixLines(name, colors[i % colors.length], child.stderr!, process.stderr);
    child.once("exit", (code, signal) => {
      if (!stopping) {
        console.error(`[start] ${name} exited unexpectedly (code ${code}, signal ${signal}); stopping the platform`);
        stopAll(1);
      }
    });
    children.set(name, child);
  });

  const results = await Promise.all(
    SERVICES.map(async (name) => {
      const port = loadConfig(name).port ?? DEFAULT_PORTS[name];
      return [name, port, await waitHealthy(port, children.get(name)!)] as const;
    }),
  );
  if (results.some(([, , ok]) => !ok)) {
    console.error("[start] some services did not become healthy:", results.filter(([, , ok]) => !ok).map(([n]) => n).join(", "));
    stopAll(1);
    return;
  }
  console.log(`\n[start] Vouch is up in ${((Date.now() - started) / 1000).toFixed(1)} s:`);
  for (const [name, port] of results) console.log(`  ${name.padEnd(10)} http://127.0.0.1:${port}`);
  console.log(`  console    http://127.0.0.1:${loadConfig("edge").port}/`);
  console.log("  try: npx buf curl --protocol grpc --http2-prior-knowledge --list-services http://127.0.0.1:50051");
  console.log("  Ctrl-C stops everything.\n");
}

main().catch((err) => {
  console.error("[start] failed:", err);
  process.exit(1);
});
