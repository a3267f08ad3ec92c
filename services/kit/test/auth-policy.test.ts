// The shared auth interceptor and error mapping, exercised through a real listener with
// a stand-in AuthService implementation (the real one lives in services/auth).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { SignJWT, UnsecuredJWT, createLocalJWKSet, errors as joseErrors, exportJWK, generateKeyPair, type JWK } from "jose";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { loadConfig } from "../config.js";
import { createLogger } from "../log.js";
import { createMetrics } from "../metrics.js";
import { createServiceServer, type RunningServer } from "../server.js";
import { createTokenVerifier } from "../auth.js";
import { callerKey, clientIpKey, requireCaller } from "../context.js";
import { invalidArgument, notFound, resourceExhausted, type VouchError } from "../errors.js";

const ISSUER = "https://auth.test";
const AUDIENCE = "vouch-test";

describe("auth interceptor and error mapping", () => {
  let server: RunningServer;
  let client: Client<typeof AuthService>;
  let privateKey: CryptoKey;
  let publicJwk: JWK;
  const kid = "key-1";

  const token = (claims: Record<string, unknown> = {}, opts: { kid?: string; exp?: string | number | null; header?: Record<string, unknown>; iss?: string; aud?: string } = {}) => {
    const jwt = new SignJWT({ roles: ["CUSTOMER"], ...claims })
      .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid: opts.kid ?? kid, ...opts.header })
      .setSubject("user-1")
      .setJti(randomUUID())
      .setIssuedAt()
      .setIssuer(opts.iss ?? ISSUER)
      .setAudience(opts.aud ?? AUDIENCE);
    if (opts.exp !== null) jwt.setExpirationTime(opts.exp ?? "5m");
    return jwt.sign(privateKey);
  };
  const bearer = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });

  async function expectError(call: Promise<unknown>, code: Code, reason: string) {
    const err = await call.then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(Code[err.code], Code[code]);
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.reason, reason);
    return err;
  }

  before(async () => {
    const pair = await generateKeyPair("EdDSA", { extractable: true });
    privateKey = pair.privateKey;
    publicJwk = { ...(await exportJWK(pair.publicKey)), kid, alg: "EdDSA", use: "sig" };
    const config = { ...loadConfig("auth", {}), port: 0, trustForwardedFor: true };
    server = await createServiceServer({
      config,
      log: createLogger("test", "silent"),
      metrics: createMetrics("test", { processMetrics: false }),
      services: [AuthService],
      readiness: [],
      verifier: createTokenVerifier({ issuer: ISSUER, audience: AUDIENCE, keys: createLocalJWKSet({ keys: [publicJwk] }) }),
      routes: (router) =>
        router.service(AuthService, {
          // Public: tells who the interceptor let through (no key = anonymous).
          getJwks: (_req, ctx) => {
            const caller = ctx.values.get(callerKey);
            return { keys: caller ? [{ kid: caller.subject }] : [] };
          },
          getMe: (_req, ctx) => ({ user: { id: requireCaller(ctx).subject } }),
          listUsers: async (req) => {
            if (req.pageToken === "slow") await new Promise((r) => setTimeout(r, 150));
            return { users: [] };
          },
          getUser: (req, ctx) => {
            if (req.userId === "whoami") return { user: { id: ctx.values.get(clientIpKey) } };
            throw notFound("USER_NOT_FOUND", `user ${req.userId} does not exist`, { userId: req.userId });
          },
          register: () => {
            throw invalidArgument([{ field: "email", description: "must be an email address", reason: "EMAIL_INVALID" }]);
          },
          login: () => {
            throw resourceExhausted("RATE_LIMITED", "too many attempts", 1500);
          },
          updateMe: () => {
            throw new Error("connection to db-7.internal:5432 refused");
          },
        }),
    }).listen();
    client = createClient(AuthService, createGrpcTransport({ baseUrl: server.url }));
  });
  after(() => server.close());

  test("a public rpc needs no token", async () => {
    assert.deepEqual((await client.getJwks({})).keys, []);
  });

  test("on a public rpc a valid token identifies the caller, and an expired, forged or malformed one makes the call anonymous instead of failing it", async () => {
    assert.deepEqual((await client.getJwks({}, bearer(await token()))).keys.map((k) => k.kid), ["user-1"]);
    const stale = {
      expired: bearer(await token({}, { exp: Math.floor(Date.now() / 1000) - 60 })),
      "unknown kid": bearer(await token({}, { kid: "someone-elses" })),
      garbage: bearer("garbage"),
      "not a bearer header": { headers: { authorization: "Basic dXNlcjpwYXNz" } },
    };
    for (const [name, opts] of Object.entries(stale)) {
      assert.deepEqual((await client.getJwks({}, opts)).keys, [], name);
    }
    // The same tokens still fail where a caller is required.
    await expectError(client.getMe({}, stale.expired), Code.Unauthenticated, "TOKEN_EXPIRED");
    await expectError(client.getMe({}, stale["not a bearer header"]), Code.Unauthenticated, "TOKEN_INVALID");
  });

  test("many calls in flight at once do not trip Node's listener-leak warning on the shutdown signal", async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => void (w.name === "MaxListenersExceededWarning" && warnings.push(w));
    process.on("warning", onWarning);
    try {
      const admin = bearer(await token({ roles: ["ADMIN"] }));
      await Promise.all(Array.from({ length: 30 }, () => client.listUsers({ pageToken: "slow" }, admin)));
      await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    } finally {
      process.off("warning", onWarning);
    }
    assert.deepEqual(warnings.map((w) => w.message), []);
  });

  test("with TRUST_FORWARDED_FOR the client address is the first x-forwarded-for entry", async () => {
    const admin = bearer(await token({ roles: ["ADMIN"] }));
    const res = await client.getUser({ userId: "whoami" }, { headers: { ...admin.headers, "x-forwarded-for": "203.0.113.7, 10.0.0.1" } });
    assert.equal(res.user?.id, "203.0.113.7");
  });

  test("a verified token is remembered: its signature is checked once, but its key, expiry and revocation on every call", async () => {
    // The key getter answers with the real key, then with an impostor under the same kid (a
    // signature check would now fail), then with no key at all (the key was retired).
    let keys: "real" | "impostor" | "retired" = "real";
    let keyLookups = 0;
    const realKeys = createLocalJWKSet({ keys: [publicJwk] });
    const impostorKeys = createLocalJWKSet({ keys: [{ ...(await exportJWK((await generateKeyPair("EdDSA", { extractable: true })).publicKey)), kid }] });
    let revokedNow = false;
    let revocationChecks = 0;
    const verifier = createTokenVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      keys: (header, tok) => {
        keyLookups++;
        if (keys === "retired") throw new joseErrors.JWKSNoMatchingKey();
        return (keys === "real" ? realKeys : impostorKeys)(header, tok);
      },
      isRevoked: async () => (revocationChecks++, revokedNow),
    });
    const shortLived = await token({}, { exp: Math.floor(Date.now() / 1000) + 2 });
    for (let i = 0; i < 3; i++) assert.equal((await verifier.verify(shortLived)).subject, "user-1");
    assert.equal(keyLookups, 3, "the key is looked up on every call");
    assert.equal(revocationChecks, 3);
    keys = "impostor";
    assert.equal((await verifier.verify(shortLived)).subject, "user-1", "the signature is not checked again");
    const unseen = await token();
    await assert.rejects(verifier.verify(unseen), (err: VouchError) => err.reason === "TOKEN_INVALID", "a new token's signature is checked");
    keys = "retired";
    await assert.rejects(verifier.verify(shortLived), (err: VouchError) => err.reason === "TOKEN_INVALID", "a retired key's remembered token is refused");
    keys = "real";
    assert.equal((await verifier.verify(shortLived)).subject, "user-1");
    revokedNow = true;
    await assert.rejects(verifier.verify(shortLived), (err: VouchError) => err.reason === "TOKEN_REVOKED");
    revokedNow = false;
    await new Promise((r) => setTimeout(r, 2_100));
    await assert.rejects(verifier.verify(shortLived), (err: VouchError) => err.reason === "TOKEN_EXPIRED");
  });

  test("an authenticated rpc without a token is UNAUTHENTICATED with TOKEN_MISSING", async () => {
    await expectError(client.getMe({}), Code.Unauthenticated, "TOKEN_MISSING");
  });

  test("a valid token reaches the handler with the caller in its context", async () => {
    assert.equal((await client.getMe({}, bearer(await token()))).user?.id, "user-1");
  });

  test("an admin rpc refuses a customer token with PERMISSION_DENIED and accepts an admin token", async () => {
    await expectError(client.listUsers({}, bearer(await token())), Code.PermissionDenied, "ADMIN_REQUIRED");
    assert.deepEqual((await client.listUsers({}, bearer(await token({ roles: ["ADMIN"] })))).users, []);
  });

  test("refuses every forged or unfit token before the handler runs", async () => {
    const hs256WithPublicKey = await new SignJWT({ roles: ["ADMIN"] })
      .setProtectedHeader({ alg: "HS256", typ: "at+jwt", kid })
      .setSubject("user-1").setJti("j").setIssuedAt().setIssuer(ISSUER).setAudience(AUDIENCE).setExpirationTime("5m")
      .sign(new TextEncoder().encode(JSON.stringify(publicJwk)));
    const unsigned = new UnsecuredJWT({ roles: ["ADMIN"] })
      .setSubject("user-1").setJti("j").setIssuedAt().setIssuer(ISSUER).setAudience(AUDIENCE).setExpirationTime("5m").encode();
    const variants: Record<string, [string, string]> = {
      "alg none": [unsigned, "TOKEN_INVALID"],
      "HS256 signed with the public key": [hs256WithPublicKey, "TOKEN_INVALID"],
      "unknown kid": [await token({}, { kid: "someone-elses" }), "TOKEN_INVALID"],
      "jku header": [await token({}, { header: { jku: "https://evil.test/jwks.json" } }), "TOKEN_INVALID"],
      "embedded jwk header": [await token({}, { header: { jwk: publicJwk } }), "TOKEN_INVALID"],
      "missing exp": [await token({}, { exp: null }), "TOKEN_INVALID"],
      "expired": [await token({}, { exp: Math.floor(Date.now() / 1000) - 60 }), "TOKEN_EXPIRED"],
      "wrong issuer": [await token({}, { iss: "https://evil.test" }), "TOKEN_INVALID"],
      "wrong audience": [await token({}, { aud: "another-app" }), "TOKEN_INVALID"],
      "tampered payload": [(await token()).replace(/\.([^.]+)\./, (_m, p: string) => `.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, "base64url").toString()), roles: ["ADMIN"] })).toString("base64url")}.`), "TOKEN_INVALID"],
      "not a JWT": ["garbage", "TOKEN_INVALID"],
    };
    for (const [name, [bad, reason]] of Object.entries(variants)) {
      await assert.doesNotReject(expectError(client.getMe({}, bearer(bad)), Code.Unauthenticated, reason), name);
    }
  });

  test("a domain error keeps its code, reason and metadata on the wire", async () => {
    const err = await expectError(client.getUser({ userId: "u-404" }, bearer(await token({ roles: ["ADMIN"] }))), Code.NotFound, "USER_NOT_FOUND");
    const info = err.findDetails(ErrorInfoSchema)[0];
    assert.equal(info.domain, "auth.vouch.dev");
    assert.deepEqual(info.metadata, { userId: "u-404" });
  });

  test("bad input carries BadRequest field violations, over Connect JSON too", async () => {
    const json = createClient(AuthService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const err = await expectError(json.register({}), Code.InvalidArgument, "INVALID_ARGUMENT");
    const violations = err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => [v.field, v.reason]);
    assert.deepEqual(violations, [["email", "EMAIL_INVALID"]]);
  });

  test("a limit carries RetryInfo with the delay", async () => {
    const err = await expectError(client.login({}), Code.ResourceExhausted, "RATE_LIMITED");
    const delay = err.findDetails(RetryInfoSchema)[0]?.retryDelay;
    assert.equal(Number(delay?.seconds) * 1000 + (delay?.nanos ?? 0) / 1e6, 1500);
  });

  test("an unexpected error is a bare INTERNAL with no internals on the wire", async () => {
    const err = await expectError(client.updateMe({}, bearer(await token())), Code.Internal, "INTERNAL");
    assert.equal(err.rawMessage, "internal error");
    assert.doesNotMatch(JSON.stringify(err), /db-7|5432|refused/);
  });

  test("an unimplemented rpc answers UNIMPLEMENTED (after the access check)", async () => {
    const err = await client.logout({}).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ConnectError);
    assert.equal(err.code, Code.Unimplemented);
  });
});
