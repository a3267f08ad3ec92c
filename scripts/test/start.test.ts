// `npm start` as a new user runs it: every process comes up healthy, SERVING, listing its
// services by reflection, and Ctrl-C (SIGTERM) stops them all.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile, type ChildProcess } from "node:child_process";
import * as net from "node:net";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { createTestDatabase, deleteStream, testEventNames, uniqueSuffix, type TestDatabase } from "../../services/kit/testing.js";
import { connectNats } from "../../services/kit/events/stream.js";
import { createLogger } from "../../services/kit/log.js";

const run = promisify(execFile);
const PROCESSES = ["auth", "promotion", "voucher", "provider", "edge"] as const;

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

let db: TestDatabase;
const events = testEventNames("start");
let child: ChildProcess;
let output = "";
const ports = {} as Record<(typeof PROCESSES)[number], number>;

before(async () => {
  db = await createTestDatabase("start");
  for (const name of PROCESSES) ports[name] = await freePort();
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    DATABASE_URL: db.url,
    REDIS_KEY_PREFIX: `t:${uniqueSuffix()}:`,
    NATS_STREAM: events.stream,
    NATS_SUBJECT_PREFIX: events.subjectPrefix,
    LOG_LEVEL: "warn",
  };
  for (const name of PROCESSES) {
    env[`${name.toUpperCase()}_PORT`] = String(ports[name]);
    if (name !== "edge") env[`${name.toUpperCase()}_URL`] = `http://127.0.0.1:${ports[name]}`;
  }
  env.PROVIDER_SIM_PORT = String(await freePort()); // npm start also runs provider-sim (default 8090)
  child = spawn(process.execPath, ["--import", "tsx", "scripts/start.ts"], { env, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout!.on("data", (d) => (output += d));
  child.stderr!.on("data", (d) => (output += d));
  const deadline = Date.now() + 60_000;
  while (!output.includes("Vouch is up")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`npm start did not come up:\n${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  if (child.exitCode === null) child.kill("SIGKILL");
  const nc = await connectNats("nats://127.0.0.1:4222", createLogger("test", "silent"));
  await deleteStream(nc, events.stream);
  await nc.close();
  await db.drop();
});

test("npm start brings up all five processes, each alive, ready and SERVING", async () => {
  for (const name of PROCESSES) {
    const base = `http://127.0.0.1:${ports[name]}`;
    assert.equal((await fetch(`${base}/healthz`)).status, 200, `${name} /healthz`);
    assert.equal((await fetch(`${base}/readyz`)).status, 200, `${name} /readyz`);
    const health = createClient(Health, createGrpcTransport({ baseUrl: base }));
    assert.equal((await health.check({})).status, ServingStatus.SERVING, `${name} gRPC health`);
  }
});

test("the edge serves the admin console at /", async () => {
  const res = await fetch(`http://127.0.0.1:${ports.edge}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(await res.text(), /<div id="root">/);
});

test("each service lists its own contract by reflection (buf curl --list-services)", async () => {
  const expected: Record<string, string> = {
    auth: "vouch.auth.v1.AuthService",
    promotion: "vouch.promotion.v1.PromotionService",
    voucher: "vouch.voucher.v1.VoucherService",
    provider: "vouch.provider.v1.ProviderService",
  };
  for (const [name, service] of Object.entries(expected)) {
    const { stdout } = await run("node_modules/.bin/buf", [
      "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", `http://127.0.0.1:${ports[name as keyof typeof ports]}`,
    ]);
    assert.ok(stdout.split("\n").includes(service), `${name} lists ${service}: ${stdout}`);
  }
});

test("SIGTERM stops every process and frees every port", async () => {
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
  for (const name of PROCESSES) {
    await assert.rejects(fetch(`http://127.0.0.1:${ports[name]}/healthz`), `${name} still answers`);
  }
});
