// Private Postgres, Redis and NATS for fault scenarios: restarting, killing or flushing them
// must never disturb the other test files running on the machine's shared servers. Each is
// started once per test file on spare ports, in a directory of its own that dispose() removes.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { stopProcess, type PrivateNats } from "../../services/kit/testing.js";
import { freePort, waitFor } from "./util.js";

export type { PrivateNats };

/** Every child spawned here dies with the test process, whatever happens to the test. */
const children = new Set<ChildProcess>();
const clusters = new Set<() => void>();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
  for (const stop of clusters) stop();
  // A clean exit: nothing is left for the reaper.
  rmSync(reaperScript, { force: true });
});

// ── the reaper ───────────────────────────────────────────────────────────────────────────
// A test process killed outright (the runner's timeout, an out-of-memory abort) runs no exit
// handler: a detached shell watches it and, once it is gone, runs the cleanup lines of
// whatever is still registered (stop the private Postgres, kill Redis, NATS and the service
// processes, remove their directories).

const reaperScript = join(tmpdir(), `vouch-rel-reaper-${process.pid}.sh`);
const cleanups = new Map<string, string>();
let reaper: ChildProcess | undefined;

/** Registers (or, with `line` undefined, forgets) a shell line the reaper runs if this process dies abruptly. */
export function onAbruptExit(key: string, line: string | undefined): void {
  if (line === undefined) cleanups.delete(key);
  else cleanups.set(key, line);
  writeFileSync(reaperScript, [...cleanups.values()].map((l) => `${l} >/dev/null 2>&1`).join("\n") + "\n");
  if (!reaper) {
    reaper = spawn("sh", ["-c", `while kill -0 ${process.pid} 2>/dev/null; do sleep 2; done; [ -f ${reaperScript} ] && sh ${reaperScript}; rm -f ${reaperScript}`], { detached: true, stdio: "ignore" });
    reaper.unref();
  }
}

export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

// ── Postgres ─────────────────────────────────────────────────────────────────────────────

export interface PrivatePostgres {
  port: number;
  /** URL of the `vouch` database (the services create it on start). */
  url: string;
  /** URL of any database of this cluster. */
  urlOf(database: string): string;
  start(): Promise<void>;
  /** `pg_ctl stop -m fast` (sessions are disconnected, a checkpoint is written) or `-m immediate` (a crash). */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  restart(mode?: "fast" | "immediate"): Promise<void>;
  dispose(): Promise<void>;
}

function postgresBin(): string {
  const root = process.env.PG_BIN_ROOT ?? "/usr/lib/postgresql";
  const version = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a))[0] : undefined;
  if (!version) throw new Error(`no PostgreSQL server binaries under ${root}`);
  return join(root, version, "bin");
}

/**
 * Runs a Postgres tool as the postgres user when we are root (initdb refuses root), without
 * blocking this process: the load generators keep running while pg_ctl restarts the server.
 */
function asPostgres(cmd: string, args: string[]): Promise<{ status: number | null; output: string }> {
  const root = process.getuid?.() === 0;
  const child = root ? spawn("runuser", ["-u", "postgres", "--", cmd, ...args]) : spawn(cmd, args);
  let output = "";
  child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  return new Promise((resolve) => child.once("close", (status) => resolve({ status, output })));
}

export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = postgresBin();
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "vouch-rel-pg-"));
  chmodSync(dir, 0o777);
  const data = join(dir, "data");
  if (process.getuid?.() === 0) spawnSync("chown", ["postgres:postgres", dir]);
  const init = await asPostgres(join(bin, "initdb"), ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
  if (init.status !== 0) throw new Error(`initdb failed: ${init.output}`);
  const options = [
    `-p ${port}`,
    `-k ${dir}`,
    "-c listen_addresses=127.0.0.1",
    "-c max_connections=400",
    "-c shared_buffers=64MB",
    // The machine never loses power during a test, so skipping fsync loses nothing a process
    // crash could. synchronous_commit must stay on: with it off, `pg_ctl -m immediate` loses
    // commits already acknowledged to clients (the Postgres-restart scenario catches that).
    "-c fsync=off",
    "-c full_page_writes=off",
  ].join(" ");
  const pgCtl = (args: string[]) => asPostgres(join(bin, "pg_ctl"), ["-D", data, "-l", join(dir, "postgres.log"), ...args]);

  async function start() {
    const r = await pgCtl(["-o", options, "-w", "-t", "60", "start"]);
    if (r.status !== 0) throw new Error(`pg_ctl start failed: ${r.output}`);
    await waitFor(`postgres on port ${port}`, () => accepts(port), 30_000, 50);
  }
  async function stop(mode: "fast" | "immediate" = "fast") {
    const r = await pgCtl(["-m", mode, "-w", "-t", "60", "stop"]);
    if (r.status !== 0 && !/not running|PID file .* does not exist/i.test(r.output)) throw new Error(`pg_ctl stop failed: ${r.output}`);
  }
  const asUser = process.getuid?.() === 0 ? "runuser -u postgres -- " : "";
  onAbruptExit(`pg:${dir}`, `${asUser}${join(bin, "pg_ctl")} -D ${data} -m immediate stop; rm -rf ${dir}`);
  await start();
  const urlOf = (database: string) => `postgres://postgres@127.0.0.1:${port}/${database}`;
  // On an abrupt exit there is no event loop left to wait on: stop synchronously.
  const emergencyStop = () => void spawnSync(process.getuid?.() === 0 ? "runuser" : join(bin, "pg_ctl"), [
    ...(process.getuid?.() === 0 ? ["-u", "postgres", "--", join(bin, "pg_ctl")] : []), "-D", data, "-m", "immediate", "stop",
  ]);
  clusters.add(emergencyStop);
  return {
    port,
    url: urlOf("vouch"),
    urlOf,
    start,
    stop,
    async restart(mode = "fast") {
      await stop(mode);
      await start();
    },
    async dispose() {
      await stop("immediate").catch(() => {});
      clusters.delete(emergencyStop);
      rmSync(dir, { recursive: true, force: true });
      onAbruptExit(`pg:${dir}`, undefined);
    },
  };
}

// ── Redis ────────────────────────────────────────────────────────────────────────────────

export interface PrivateRedis {
  port: number;
  url: string;
  start(): Promise<void>;
  /** SIGKILL: Redis disappears without a goodbye, like a crashed node. */
  kill(): Promise<void>;
  /** FLUSHALL: every limit, lock and cache is gone at once. */
  flush(): Promise<void>;
  running(): boolean;
  dispose(): Promise<void>;
}

export async function startPrivateRedis(binary = process.env.REDIS_SERVER_BIN ?? "redis-server"): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "vouch-rel-redis-"));
  removeOnAbruptExit(dir);
  let child: ChildProcess | undefined;

  async function start() {
    if (child) return;
    const proc = spawn(binary, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: "ignore" });
    track(proc);
    child = proc;
    await waitFor(`redis on port ${port}`, () => {
      if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}`);
      return accepts(port);
    }, 15_000, 25);
  }
  async function kill() {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
  }
  await start();
  const url = `redis://127.0.0.1:${port}`;
  return {
    port,
    url,
    start,
    kill,
    running: () => child !== undefined,
    async flush() {
      const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
      await client.connect();
      await client.flushall();
      client.disconnect();
    },
    async dispose() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
      removeOnAbruptExit(dir, false);
    },
  };
}

/** Tracks a child so it is killed if the test process exits without cleaning up, or dies. */
export function track(child: ChildProcess): void {
  children.add(child);
  const key = `pid:${child.pid}`;
  onAbruptExit(key, `kill -9 ${child.pid}`);
  child.once("exit", () => {
    children.delete(child);
    onAbruptExit(key, undefined);
  });
}

/** Removes `dir` if this process dies abruptly (forgotten again by `keepDir`). */
export function removeOnAbruptExit(dir: string, remove = true): void {
  onAbruptExit(`dir:${dir}`, remove ? `rm -rf ${dir}` : undefined);
}

// ── NATS ─────────────────────────────────────────────────────────────────────────────────

/**
 * A JetStream nats-server of our own, with the interface of the kit's `startPrivateNats`, but
 * with its process and store directory known to the reaper.
 */
export async function startPrivateNats(binary = process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server"): Promise<PrivateNats> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), "vouch-rel-nats-"));
  removeOnAbruptExit(storeDir);
  let child: ChildProcess | undefined;

  async function start() {
    if (child) return;
    const proc = spawn(binary, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], { stdio: "ignore" });
    track(proc);
    child = proc;
    await waitFor(`nats-server on port ${port}`, () => {
      if (proc.exitCode !== null) throw new Error(`nats-server exited with ${proc.exitCode}`);
      return accepts(port);
    }, 15_000, 25);
  }
  async function stop() {
    const proc = child;
    child = undefined;
    if (proc) await stopProcess(proc);
  }
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    start,
    stop,
    async dispose() {
      await stop();
      rmSync(storeDir, { recursive: true, force: true });
      removeOnAbruptExit(storeDir, false);
    },
  };
}
