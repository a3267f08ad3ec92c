import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
} from "../../../gen/health/v1/health_pb.js";
import {
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
} from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import { loadConfig } from "../config.js";
import { createLogger } from "../log.js";
import { createMetrics } from "../metrics.js";
import { createServiceServer, type RunningServer } from "../server.js";
import { createTokenVerifier } from "../auth.js";

const run = promisify(execFile);

/** A server whose only dependency check is controlled by the test. */
async function startServer(dependencyUp: () => boolean): Promise<{ server: RunningServer; metrics: ReturnType<typeof createMetrics> }> {
  const config = { ...loadConfig("voucher", {}), port: 0, shutdownGraceMs: 2_000 };
  const metrics = createMetrics("test", { processMetrics: false });
  const server = await createServiceServer({
    config,
    log: createLogger("test", "silent"),
    metrics,
    services: [],
    routes: () => {},
    readiness: [{ name: "dependency", check: async () => { if (!dependencyUp()) throw new Error("dependency is down"); } }],
    verifier: createTokenVerifier({ issuer: "x", audience: "y", keys: async () => { throw new Error("no keys in this test"); } }),
  }).listen();
  return { server, metrics };
}

function grpcHealthCheck(address: string): Promise<ServingStatus> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (msg: Uint8Array) => Buffer.from(msg),
      (bytes: Buffer) => fromBinary(HealthCheckResponseSchema, bytes),
      toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: "" })),
      (err, res) => {
        client.close();
        if (err) reject(err);
        else resolve(res!.status);
      },
    );
  });
}

describe("service listener", () => {
  let up = true;
  let server: RunningServer;
  let metrics: ReturnType<typeof createMetrics>;
  before(async () => ({ server, metrics } = await startServer(() => up)));
  after(() => server.close());

  test("a grpc-js client over HTTP/2 and a Connect JSON POST over HTTP/1.1 reach the same handler", async () => {
    assert.equal(await grpcHealthCheck(`127.0.0.1:${server.port}`), ServingStatus.SERVING);
    const res = await fetch(`${server.url}/grpc.health.v1.Health/Check`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "SERVING" });
    const served = (await metrics.registry.getSingleMetric("vouch_rpc_requests_total")!.get()).values
      .filter((v) => v.labels.rpc === "grpc.health.v1.Health/Check" && v.labels.code === "OK")
      .reduce((sum, v) => sum + v.value, 0);
    assert.equal(served, 2);
  });

  test("Connect over HTTP/2 and gRPC-Web over HTTP/1.1 work on the same port", async () => {
    const h2 = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    assert.equal((await h2.check({})).status, ServingStatus.SERVING);
    const web = createClient(Health, createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    assert.equal((await web.check({})).status, ServingStatus.SERVING);
  });

  test("plain HTTP /healthz, /readyz and /metrics answer next to the rpcs", async () => {
    assert.equal(await (await fetch(`${server.url}/healthz`)).text(), "ok\n");
    const ready = await fetch(`${server.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { ready: true, checks: { dependency: "ok" } });
    const text = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(text, /vouch_rpc_requests_total\{rpc="grpc.health.v1.Health\/Check",code="OK",service="test"\}/);
    assert.equal((await fetch(`${server.url}/nope`)).status, 404);
  });

  test("health reports NOT_SERVING while a dependency is down, and SERVING again when it is back", async () => {
    up = false;
    await new Promise((r) => setTimeout(r, 600)); // past the readiness cache
    try {
      assert.equal(await grpcHealthCheck(`127.0.0.1:${server.port}`), ServingStatus.NOT_SERVING);
      const ready = await fetch(`${server.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.deepEqual((await ready.json()).checks, { dependency: "dependency is down" });
    } finally {
      up = true;
    }
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(await grpcHealthCheck(`127.0.0.1:${server.port}`), ServingStatus.SERVING);
  });

  test("reflection v1 lists the services to a grpc-js client", async () => {
    const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    const call = client.makeBidiStreamRequest(
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      (msg: Uint8Array) => Buffer.from(msg),
      (bytes: Buffer) => fromBinary(ServerReflectionResponseSchema, bytes),
    );
    const answers: string[][] = [];
    const done = new Promise<void>((resolve, reject) => {
      call.on("data", (res) => {
        if (res.messageResponse.case === "listServicesResponse") answers.push(res.messageResponse.value.service.map((s: { name: string }) => s.name));
      });
      call.on("end", resolve);
      call.on("error", reject);
    });
    call.write(toBinary(ServerReflectionRequestSchema, create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } })));
    call.end();
    await done;
    client.close();
    assert.deepEqual(answers, [["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]]);
  });

  test("buf curl lists services and calls an rpc by reflection alone (v1 and v1alpha)", async () => {
    const buf = "node_modules/.bin/buf";
    for (const reflectProtocol of ["grpc-v1", "grpc-v1alpha"]) {
      const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", reflectProtocol, "--list-services", server.url]);
      assert.match(stdout, /grpc\.health\.v1\.Health/);
    }
    const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", "{}", `${server.url}/grpc.health.v1.Health/Check`]);
    assert.deepEqual(JSON.parse(stdout), { status: "SERVING" });
  });

  test("an unknown path gets a plain 404, not a crash", async () => {
    const res = await fetch(`${server.url}/vouch.nothing.v1.Nope/Call`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    assert.equal(res.status, 404);
  });
});

describe("graceful shutdown", () => {
  test("a health watch stream ends and the port is released when the server closes", async () => {
    const { server } = await startServer(() => true);
    const client = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    const seen: ServingStatus[] = [];
    const watching = (async () => {
      try {
        for await (const res of client.watch({})) seen.push(res.status);
      } catch {
        // cut by the shutdown: expected
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    const started = Date.now();
    await server.close();
    await watching;
    assert.equal(seen[0], ServingStatus.SERVING);
    assert.ok(Date.now() - started < 4_000, "close finished within the grace period");
    await assert.rejects(fetch(`${server.url}/healthz`));
  });
});
