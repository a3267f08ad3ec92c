// Readiness against real dependencies: a service whose NATS goes away reports it on
// /readyz (503, naming the dependency) and as NOT_SERVING on grpc.health.v1, and is SERVING
// again once NATS is back — with its Postgres and Redis checked for real all along.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../../gen/health/v1/health_pb.js";
import { loadConfig } from "../config.js";
import { listen, startPlatform, type Platform } from "../platform.js";
import type { RunningServer } from "../server.js";
import { createTestDatabase, createTestTokens, startPrivateNats, testEventNames, uniqueSuffix, waitFor, type PrivateNats, type TestDatabase } from "../testing.js";

let nats: PrivateNats;
let database: TestDatabase;
let platform: Platform<unknown>;
let server: RunningServer;

before(async () => {
  nats = await startPrivateNats();
  database = await createTestDatabase("readiness");
  const events = testEventNames("readiness");
  const config = loadConfig("voucher", {
    ...process.env,
    DATABASE_URL: database.url,
    NATS_URL: nats.url,
    NATS_STREAM: events.stream,
    NATS_SUBJECT_PREFIX: events.subjectPrefix,
    REDIS_KEY_PREFIX: `t:${uniqueSuffix()}:`,
    LOG_LEVEL: "silent",
    PORT: "0",
  });
  const tokens = await createTestTokens({ issuer: config.jwt.issuer, audience: config.jwt.audience });
  platform = await startPlatform(config, { postgres: true, redis: true, events: true, verifier: tokens.verifier });
  server = await listen(platform, { services: [], routes: () => {} });
});

after(async () => {
  await server?.close();
  await platform?.close();
  await nats?.dispose();
  await database?.drop();
});

const readyz = async () => {
  const res = await fetch(`${server.url}/readyz`);
  return { status: res.status, body: (await res.json()) as { checks: Record<string, string> } };
};
const grpcStatus = () => createClient(Health, createGrpcTransport({ baseUrl: server.url })).check({ service: "" }).then((r) => r.status);

test("NATS going down makes the service NOT_SERVING and /readyz 503 naming it; back up, SERVING again", async () => {
  const up = await readyz();
  assert.equal(up.status, 200);
  assert.deepEqual(up.body.checks, { postgres: "ok", redis: "ok", nats: "ok" });
  assert.equal(await grpcStatus(), ServingStatus.SERVING);

  await nats.stop();
  const down = await waitFor("readiness to notice NATS is gone", async () => {
    const r = await readyz();
    return r.status === 503 ? r : undefined;
  }, 15_000, 100);
  assert.notEqual(down.body.checks.nats, "ok");
  assert.equal(down.body.checks.postgres, "ok", "the other dependencies are still reported healthy");
  assert.equal(await grpcStatus(), ServingStatus.NOT_SERVING);
  assert.equal((await fetch(`${server.url}/healthz`)).status, 200, "liveness is unaffected: restarting would not bring NATS back");

  await nats.start();
  await waitFor("readiness once NATS is back", async () => (await readyz()).status === 200, 20_000, 100);
  assert.equal(await grpcStatus(), ServingStatus.SERVING);
});
