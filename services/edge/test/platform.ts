// A real Vouch platform for edge and console tests: each service runs as its own process
// (`node --import tsx services/<name>/main.ts`, exactly as `npm start` runs it) on spare
// ports, against the real Postgres, Redis and NATS, with a database, Redis key prefix and
// JetStream stream of its own that are removed afterwards. Auth bootstraps an admin.
import { spawn, type ChildProcess } from "node:child_process";
import * as net from "node:net";
import { connectNats } from "../../kit/events/stream.js";
import { createLogger } from "../../kit/log.js";
import { serviceNodeArgs } from "../../kit/launch.js";
import { createTestDatabase, deleteStream, stopProcess, testEventNames, uniqueSuffix, type TestDatabase } from "../../kit/testing.js";

export type PlatformProcess = "auth" | "voucher" | "promotion" | "provider" | "provider-sim" | "edge";

export const ADMIN = { username: "admin", password: "console-admin-Passw0rd!" };

export interface TestPlatform {
  /** Base URL of each started process. */
  urls: Partial<Record<PlatformProcess, string>>;
  /** Process id of each started process (benchmarks read their CPU time). */
  pids: Partial<Record<PlatformProcess, number>>;
  /** The environment shared by the processes (database, Redis prefix, stream, peer URLs). */
  env: Record<string, string>;
  /** Everything the processes printed, for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const envName = (name: PlatformProcess) => name.toUpperCase().replace("-", "_");

export async function startTestPlatform(
  label: string,
  processes: PlatformProcess[],
  extraEnv: Partial<Record<PlatformProcess | "all", Record<string, string>>> = {},
  /** Extra node flags per process, e.g. `--cpu-prof` (which NODE_OPTIONS does not accept). */
  nodeArgs: Partial<Record<PlatformProcess, string[]>> = {},
): Promise<TestPlatform> {
  const db: TestDatabase = await createTestDatabase(label);
  const events = testEventNames(label);
  const ports = {} as Record<PlatformProcess, number>;
  for (const name of ["auth", "voucher", "promotion", "provider", "provider-sim", "edge"] as const) ports[name] = await freePort();
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    DATABASE_URL: db.url,
    REDIS_KEY_PREFIX: `t:${uniqueSuffix()}:`,
    NATS_STREAM: events.stream,
    NATS_SUBJECT_PREFIX: events.subjectPrefix,
    LOG_LEVEL: process.env.LOG_LEVEL ?? "warn",
    SHUTDOWN_GRACE_MS: "2000",
    AUTH_ADMIN_PASSWORD: ADMIN.password,
    AUTH_ADMIN_USERNAME: ADMIN.username,
    PROVIDER_API_URL: `http://127.0.0.1:${ports["provider-sim"]}`,
    ...extraEnv.all,
  };
  for (const name of Object.keys(ports) as PlatformProcess[]) {
    env[`${envName(name)}_PORT`] = String(ports[name]);
    if (name !== "edge" && name !== "provider-sim") env[`${envName(name)}_URL`] = `http://127.0.0.1:${ports[name]}`;
  }

  const children: ChildProcess[] = [];
  const pids: TestPlatform["pids"] = {};
  let output = "";
  const stop = async () => {
    await Promise.all(children.map((child) => stopProcess(child, 8_000)));
    const nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", createLogger("test", "silent"));
    await deleteStream(nc, events.stream).catch(() => {});
    await nc.close();
    await db.drop();
  };
  const killAll = () => children.forEach((c) => c.kill("SIGKILL"));
  process.once("exit", killAll);

  try {
    // Auth first: every other service fetches its JWKS, and auth creates the database schema
    // race-free under its advisory lock anyway, but starting it alone keeps the two cores free.
    const order = ["auth", ...processes.filter((p) => p !== "auth")] as PlatformProcess[];
    for (const group of [order.filter((p) => p === "auth"), order.filter((p) => p !== "auth")]) {
      for (const name of group) {
        const child = spawn(process.execPath, [...(nodeArgs[name] ?? []), ...serviceNodeArgs(`services/${name}/main.ts`)], {
          env: { ...env, ...extraEnv[name] },
          stdio: ["ignore", "pipe", "pipe"],
        });
        child.stdout!.on("data", (d) => (output = (output + `[${name}] ${d}`).slice(-20_000)));
        child.stderr!.on("data", (d) => (output = (output + `[${name}] ${d}`).slice(-20_000)));
        children.push(child);
        pids[name] = child.pid;
      }
      await Promise.all(group.map((name, i) => waitHealthy(name, ports[name], children[children.length - group.length + i], () => output)));
    }
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }

  const urls: TestPlatform["urls"] = {};
  for (const name of processes) urls[name] = `http://127.0.0.1:${ports[name]}`;
  return {
    urls,
    pids,
    env,
    output: () => output,
    async stop() {
      process.off("exit", killAll);
      await stop();
    },
  };
}

async function waitHealthy(name: string, port: number, child: ChildProcess, output: () => string) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}:\n${output()}`);
    // provider-sim has no dependencies: its /readyz is its /healthz.
    const ok = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${name} did not become ready in 60 s:\n${output()}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}
