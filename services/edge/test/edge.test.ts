// The edge in front of real auth and voucher processes: Connect JSON and binary from fetch
// and from connect-web's transports, gRPC-Web, CORS, security headers, the JWKS, the access
// policy through the edge, hidden rpcs, error pass-through, rate limits, the client address
// passed on, and a server stream.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  createConnectTransport as createNodeConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport as createNodeGrpcWebTransport,
} from "@connectrpc/connect-node";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { AuthService, GetMeRequestSchema, GetMeResponseSchema } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { GenerationJobState, VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { loadConfig } from "../../kit/config.js";
import { startEdge, type EdgeProcess } from "../main.js";
import { loadEdgeSettings, type EdgeSettings } from "../settings.js";
import { CONTENT_SECURITY_POLICY } from "../security-headers.js";
import { ADMIN, startTestPlatform, type TestPlatform } from "./platform.js";

const ALLOWED_ORIGIN = "https://console.example.com";
const PASSWORD = "violet-otter-maps-42";

let platform: TestPlatform;
let edge: EdgeProcess;
let limited: EdgeProcess;
let adminToken: string;
let customerToken: string;
let staticDir: string;

const freshIp = () => `198.51.${randomInt(256)}.${randomInt(1, 255)}`;

async function startTestEdge(tune: (s: EdgeSettings) => void = () => {}): Promise<EdgeProcess> {
  const settings = loadEdgeSettings({ EDGE_CORS_ORIGINS: ALLOWED_ORIGIN });
  tune(settings);
  return startEdge(loadConfig("edge", { ...platform.env, EDGE_PORT: "0" }), settings);
}

const connect = (url: string, useBinaryFormat = false, headers: Record<string, string> = {}): Transport =>
  createConnectTransport({ baseUrl: url, useBinaryFormat, interceptors: [(next) => (req) => (Object.entries(headers).forEach(([k, v]) => req.header.set(k, v)), next(req))] });
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

async function expectError(call: Promise<unknown>, code: Code, reason?: string): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    const ce = ConnectError.from(err);
    assert.equal(Code[ce.code], Code[code], `${ce.message}`);
    if (reason) assert.equal(ce.findDetails(ErrorInfoSchema)[0]?.reason, reason, ce.message);
    return ce;
  }
  assert.fail(`expected ${Code[code]}`);
}

function newCustomer() {
  const n = randomInt(1_000_000_000);
  return {
    fullName: "Edge Customer",
    username: `edge${n}`,
    email: `edge${n}@example.com`,
    phoneNumber: `+8490${String(randomInt(10_000_000)).padStart(7, "0")}`,
    password: PASSWORD,
  };
}

before(async () => {
  platform = await startTestPlatform("edge", ["auth", "voucher"], { auth: { TRUST_FORWARDED_FOR: "true", AUTH_LOGIN_IP_BURST: "3", AUTH_LOGIN_IP_PER_HOUR: "1" } });
  staticDir = mkdtempSync(join(tmpdir(), "vouch-edge-static-"));
  mkdirSync(join(staticDir, "assets"));
  writeFileSync(join(staticDir, "index.html"), "<!doctype html><title>console</title>");
  writeFileSync(join(staticDir, "assets", "app-1234.js"), "console.log('hi')");
  edge = await startTestEdge((s) => {
    s.trustForwardedFor = true;
    s.staticDir = staticDir;
  });
  limited = await startTestEdge((s) => {
    s.trustForwardedFor = true;
    // A unit every 2 s: slow enough that a loaded machine cannot refill the burst mid-test.
    s.perIpLimit = { ratePerPeriod: 1, periodMs: 2_000, burst: 3 };
    s.perUserLimit = { ratePerPeriod: 1, periodMs: 2_000, burst: 3 };
  });
  const auth = createClient(AuthService, connect(edge.server.url, false, { "x-forwarded-for": freshIp() }));
  adminToken = (await auth.login({ identifier: ADMIN.username, password: ADMIN.password })).accessToken;
  const person = newCustomer();
  await auth.register(person);
  customerToken = (await auth.login({ identifier: person.username, password: PASSWORD })).accessToken;
});

after(async () => {
  await edge?.close();
  await limited?.close();
  await platform?.stop();
  if (staticDir) rmSync(staticDir, { recursive: true, force: true });
});

describe("protocols", () => {
  test("Connect JSON from fetch: POST, and GET for a no-side-effect rpc", async () => {
    const res = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/GetMe`, {
      method: "POST",
      headers: { "content-type": "application/json", ...bearer(adminToken) },
      body: "{}",
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { user: { username: string; roles: string[] } };
    assert.equal(body.user.username, ADMIN.username);
    assert.ok(body.user.roles.includes("ROLE_ADMIN"));

    const get = await fetch(`${edge.server.url}/vouch.voucher.v1.VoucherService/ListBooks?connect=v1&encoding=json&message=${encodeURIComponent("{}")}`, {
      headers: bearer(adminToken),
    });
    assert.equal(get.status, 200, await get.clone().text());
    assert.equal(typeof (await get.json()), "object");
  });

  test("Connect binary from fetch", async () => {
    const res = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/GetMe`, {
      method: "POST",
      headers: { "content-type": "application/proto", ...bearer(customerToken) },
      body: toBinary(GetMeRequestSchema, create(GetMeRequestSchema)),
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/proto");
    const me = fromBinary(GetMeResponseSchema, new Uint8Array(await res.arrayBuffer()));
    assert.match(me.user!.username, /^edge\d+$/);
  });

  test("connect-web's Connect transport (JSON and binary) and gRPC-Web transport", async () => {
    for (const transport of [
      connect(edge.server.url, false, bearer(customerToken)),
      connect(edge.server.url, true, bearer(customerToken)),
      createGrpcWebTransport({ baseUrl: edge.server.url, interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${customerToken}`), next(req))] }),
    ]) {
      const me = await createClient(AuthService, transport).getMe({});
      assert.match(me.user!.username, /^edge\d+$/);
    }
  });

  test("Connect and gRPC-Web over HTTP/2, and gRPC, on the same listener", async () => {
    for (const transport of [
      createNodeConnectTransport({ baseUrl: edge.server.url, httpVersion: "2" }),
      createNodeGrpcWebTransport({ baseUrl: edge.server.url, httpVersion: "2" }),
      createGrpcTransport({ baseUrl: edge.server.url }),
    ]) {
      const me = await createClient(AuthService, transport).getMe({}, { headers: bearer(adminToken) });
      assert.equal(me.user!.username, ADMIN.username);
    }
  });

  test("a server stream through the edge: generation progress until the job succeeds", async () => {
    const voucher = createClient(VoucherService, connect(edge.server.url, false, bearer(adminToken)));
    const created = await voucher.createBook({
      book: { name: "Edge stream", codePattern: "EDGE-****-****", discount: { kind: { case: "percentOff", value: { basisPoints: 3000 } } } },
      initialCodeCount: 1000,
      requestId: `edge-stream-${randomInt(1e9)}`,
    });
    const states: GenerationJobState[] = [];
    let last = 0;
    for await (const update of voucher.watchGenerationJob({ generationJobId: created.generationJob!.id })) {
      states.push(update.generationJob!.state);
      assert.ok(update.generationJob!.generatedCount >= last, "progress never goes back");
      last = update.generationJob!.generatedCount;
    }
    assert.equal(states.at(-1), GenerationJobState.SUCCEEDED);
    assert.equal(last, 1000);
  });
});

describe("browser security", () => {
  test("CORS preflight from an allowed origin names it and the Connect/gRPC-Web headers", async () => {
    const res = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/Login`, {
      method: "OPTIONS",
      headers: { origin: ALLOWED_ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "content-type,connect-protocol-version,authorization" },
    });
    assert.equal(res.status, 204);
    assert.equal(res.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
    const allowed = res.headers.get("access-control-allow-headers")!.toLowerCase();
    for (const h of ["content-type", "connect-protocol-version", "connect-timeout-ms", "x-grpc-web", "grpc-timeout", "authorization"]) assert.ok(allowed.includes(h), h);
    assert.match(res.headers.get("access-control-allow-methods")!, /POST/);

    const call = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/GetMe`, {
      method: "POST",
      headers: { origin: ALLOWED_ORIGIN, "content-type": "application/json", ...bearer(customerToken) },
      body: "{}",
    });
    assert.equal(call.status, 200);
    assert.equal(call.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
    assert.match(call.headers.get("access-control-expose-headers")!, /Grpc-Status/);
    assert.match(call.headers.get("access-control-expose-headers")!, /Grpc-Message/);
  });

  test("CORS: another origin is refused, preflight and call alike, and learns nothing", async () => {
    const preflight = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/Login`, {
      method: "OPTIONS",
      headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
    });
    assert.equal(preflight.status, 403);
    assert.equal(preflight.headers.get("access-control-allow-origin"), null);
    const call = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/GetMe`, {
      method: "POST",
      headers: { origin: "https://evil.example", "content-type": "application/json", ...bearer(customerToken) },
      body: "{}",
    });
    assert.equal(call.status, 403);
    assert.equal(call.headers.get("access-control-allow-origin"), null);
  });

  test("the edge's own origin (the console it serves) needs no CORS", async () => {
    const call = await fetch(`${edge.server.url}/vouch.auth.v1.AuthService/GetMe`, {
      method: "POST",
      headers: { origin: edge.server.url, "content-type": "application/json", ...bearer(customerToken) },
      body: "{}",
    });
    assert.equal(call.status, 200);
  });

  test("security headers on every answer; JWKS is auth's", async () => {
    for (const path of ["/", "/healthz", "/.well-known/jwks.json"]) {
      const res = await fetch(`${edge.server.url}${path}`);
      assert.equal(res.headers.get("content-security-policy"), CONTENT_SECURITY_POLICY, path);
      assert.match(res.headers.get("content-security-policy")!, /frame-ancestors 'none'/);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff");
      assert.equal(res.headers.get("x-frame-options"), "DENY");
    }
    const edgeKeys = await (await fetch(`${edge.server.url}/.well-known/jwks.json`)).json();
    const authKeys = await (await fetch(`${platform.urls.auth}/.well-known/jwks.json`)).json();
    assert.deepEqual(edgeKeys, authKeys);
    assert.ok((edgeKeys as { keys: unknown[] }).keys.length >= 1);
  });
});

describe("the console's static files", () => {
  test("index.html for the console's routes, hashed assets cached for good, nothing outside the build", async () => {
    for (const path of ["/", "/books/0190abcd", "/login"]) {
      const res = await fetch(`${edge.server.url}${path}`);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get("content-type")!, /^text\/html/);
      assert.equal(res.headers.get("cache-control"), "no-cache");
      assert.match(await res.text(), /<title>console<\/title>/);
    }
    const asset = await fetch(`${edge.server.url}/assets/app-1234.js`);
    assert.equal(asset.status, 200);
    assert.match(asset.headers.get("content-type")!, /^text\/javascript/);
    assert.match(asset.headers.get("cache-control")!, /immutable/);
    assert.equal((await fetch(`${edge.server.url}/assets/missing.js`)).status, 404);
    for (const path of ["/..%2f..%2fpackage.json", "/assets/..%2f..%2f..%2fpackage.json", "/%2e%2e/%2e%2e/etc/passwd"]) {
      // (fetch itself resolves a literal %2e%2e segment, so that one arrives as a console route.)
      const res = await fetch(`${edge.server.url}${path}`);
      const body = await res.text();
      assert.ok(res.status === 400 || res.status === 404 || body.includes("<title>console</title>"), `${path}: ${res.status}`);
      assert.doesNotMatch(body, /"name": "vouch"|root:/);
    }
  });
});

describe("access through the edge", () => {
  test("a token revoked by a password change is refused at once, although the edge remembers its signature", async () => {
    const person = newCustomer();
    const auth = createClient(AuthService, connect(edge.server.url, false, { "x-forwarded-for": freshIp() }));
    await auth.register(person);
    const old = (await auth.login({ identifier: person.username, password: PASSWORD })).accessToken;
    const asOld = createClient(AuthService, connect(edge.server.url, false, bearer(old)));
    await asOld.getMe({}); // the edge has now verified (and cached) this token
    await new Promise((r) => setTimeout(r, 5)); // the cutoff is in ms: the new token must be issued after it
    const changed = await asOld.changePassword({ currentPassword: PASSWORD, newPassword: "amber-heron-sails-77" });
    await expectError(asOld.getMe({}), Code.Unauthenticated, "TOKEN_REVOKED");
    const asNew = createClient(AuthService, connect(edge.server.url, false, bearer(changed.accessToken)));
    assert.equal((await asNew.getMe({})).user!.username, person.username);
  });

  test("a customer token is refused on an admin rpc by the edge itself", async () => {
    const auth = createClient(AuthService, connect(edge.server.url, false, bearer(customerToken)));
    const err = await expectError(auth.listUsers({}), Code.PermissionDenied, "ADMIN_REQUIRED");
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.domain, "edge.vouch.dev");
    const voucher = createClient(VoucherService, connect(edge.server.url, true, bearer(customerToken)));
    await expectError(voucher.createBook({}), Code.PermissionDenied, "ADMIN_REQUIRED");
  });

  test("no token on an authenticated rpc: UNAUTHENTICATED; a forged one too", async () => {
    const auth = createClient(AuthService, connect(edge.server.url));
    await expectError(auth.getMe({}), Code.Unauthenticated, "TOKEN_MISSING");
    const forged = createClient(AuthService, connect(edge.server.url, false, bearer(`${customerToken.slice(0, -4)}AAAA`)));
    await expectError(forged.getMe({}), Code.Unauthenticated, "TOKEN_INVALID");
  });

  test("SERVICE rpcs and IssueServiceToken are not served, whoever asks", async () => {
    const voucher = createClient(VoucherService, connect(edge.server.url, false, bearer(adminToken)));
    await expectError(voucher.issueVoucher({ grantId: "g", bookId: "b", userId: "u" }), Code.Unimplemented, "RPC_NOT_EXPOSED");
    await expectError(voucher.storePurchasedCode({}), Code.Unimplemented, "RPC_NOT_EXPOSED");
    const anonymous = createClient(AuthService, connect(edge.server.url));
    await expectError(anonymous.issueServiceToken({ clientId: "edge", clientSecret: "dev-edge-client-secret" }), Code.Unimplemented, "RPC_NOT_EXPOSED");
  });

  test("a service token is refused at the edge even where it would pass upstream", async () => {
    const direct = createClient(AuthService, createGrpcTransport({ baseUrl: platform.urls.auth! }));
    const { accessToken } = await direct.issueServiceToken({ clientId: "edge", clientSecret: "dev-edge-client-secret" });
    const voucher = createClient(VoucherService, connect(edge.server.url, false, bearer(accessToken)));
    await expectError(voucher.listBooks({}), Code.PermissionDenied, "SERVICE_TOKEN_REFUSED");
  });

  test("a service's error reaches the browser unchanged: code, reason, domain, field violations", async () => {
    const auth = createClient(AuthService, connect(edge.server.url, false, { "x-forwarded-for": freshIp() }));
    const err = await expectError(auth.register({ ...newCustomer(), email: "not-an-email" }), Code.InvalidArgument);
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.domain, "auth.vouch.dev");
    const fields = err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => v.field) ?? [];
    assert.ok(fields.includes("email"), JSON.stringify(fields));
    // The same through binary Connect and gRPC-Web.
    for (const transport of [connect(edge.server.url, true), createGrpcWebTransport({ baseUrl: edge.server.url })]) {
      const again = await expectError(createClient(AuthService, transport).register({ ...newCustomer(), email: "nope" }), Code.InvalidArgument);
      assert.ok(again.findDetails(BadRequestSchema)[0]?.fieldViolations.some((v) => v.field === "email"));
    }
  });

  test("the client address reaches auth: its per-address login throttle counts browsers apart", async () => {
    const attacker = freshIp();
    const fromAttacker = createClient(AuthService, connect(edge.server.url, false, { "x-forwarded-for": attacker }));
    let throttled: ConnectError | undefined;
    for (let i = 0; i < 6 && !throttled; i++) {
      try {
        await fromAttacker.login({ identifier: `nobody${randomInt(1e9)}`, password: "wrong-password-1" });
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code === Code.ResourceExhausted) throttled = ce;
        else assert.equal(ce.code, Code.Unauthenticated);
      }
    }
    assert.ok(throttled, "the attacker's address was throttled by auth");
    assert.equal(throttled.findDetails(ErrorInfoSchema)[0]?.domain, "auth.vouch.dev");
    const someoneElse = createClient(AuthService, connect(edge.server.url, false, { "x-forwarded-for": freshIp() }));
    assert.ok((await someoneElse.login({ identifier: ADMIN.username, password: ADMIN.password })).accessToken);
  });
});

describe("rate limits", () => {
  test("per address: the burst passes, the next call gets RESOURCE_EXHAUSTED + RetryInfo, and it recovers", async () => {
    // A user of its own: both edges keep their limits under the same Redis keys, so the calls
    // other tests made with customerToken through the first edge moved this user's budget too.
    const person = newCustomer();
    const signUp = createClient(AuthService, connect(edge.server.url, false, { "x-forwarded-for": freshIp() }));
    await signUp.register(person);
    const { accessToken } = await signUp.login({ identifier: person.username, password: PASSWORD });
    const auth = createClient(AuthService, connect(limited.server.url, false, { ...bearer(accessToken), "x-forwarded-for": freshIp() }));
    // The user limit is as tight, so this also spends the user's budget: use a fresh user below.
    for (let i = 0; i < 3; i++) await auth.getMe({});
    const err = await expectError(auth.getMe({}), Code.ResourceExhausted, "RATE_LIMITED");
    const delay = err.findDetails(RetryInfoSchema)[0]?.retryDelay;
    assert.ok(delay, "RetryInfo present");
    const ms = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
    assert.ok(ms > 0 && ms <= 2_000, `retry in ${ms} ms`);
    // The user's budget refills a moment after the address's (its third take came later in
    // the same call), and the refused call never reached it: leave room for both.
    await new Promise((r) => setTimeout(r, ms + 500));
    await auth.getMe({});
  });

  test("per user: a caller hopping addresses is still limited", async () => {
    const auth = createClient(AuthService, connect(limited.server.url, false, { "x-forwarded-for": freshIp() }));
    const person = newCustomer();
    await auth.register(person);
    const token = (await createClient(AuthService, connect(limited.server.url, false, { "x-forwarded-for": freshIp() })).login({ identifier: person.username, password: PASSWORD })).accessToken;
    const call = () => createClient(AuthService, connect(limited.server.url, false, { ...bearer(token), "x-forwarded-for": freshIp() })).getMe({});
    for (let i = 0; i < 3; i++) await call();
    const err = await expectError(call(), Code.ResourceExhausted, "RATE_LIMITED");
    assert.match(err.rawMessage, /edge-user/);
  });
});
