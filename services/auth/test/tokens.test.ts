// Tokens and keys as every other service sees them: forged or unfit tokens refused by a
// different service before its handler runs, the JWKS, key rotation with verifiers that
// refetch on an unknown kid, service tokens, private keys kept private.
import assert from "node:assert/strict";
import { createPrivateKey, generateKeyPairSync, randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { SignJWT, UnsecuredJWT, decodeProtectedHeader } from "jose";
import { toJsonString } from "@bufbuild/protobuf";
import { ListSigningKeysResponseSchema, Role, SigningKeyState } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { createTokenVerifier } from "../../kit/auth.js";
import { VouchError } from "../../kit/errors.js";
import { createServiceTokenSource, serviceCredentials } from "../../kit/service-token.js";
import { as, expectError, freshIp, newPerson, sleep, startAuthHarness, startPeerService, type AuthHarness, type PeerService } from "./harness.js";

describe("auth: tokens and keys", () => {
  let h: AuthHarness & { replicas: AuthHarness[] };
  let peer: PeerService;
  /** A second service that only meets tokens in the first and last tests, so its JWKS cache is old by then. */
  let quietPeer: PeerService;
  let quietPeerFetchedAt = 0;
  let user: { id: string; accessToken: string };
  let admin: { accessToken: string };

  before(async () => {
    h = await startAuthHarness(
      "tokens",
      (s) => {
        s.admin = { username: "root", email: "root@vouch.test", phoneNumber: "+84900000001", fullName: "Root", password: "root passphrase for tests" };
      },
      2,
    );
    peer = await startPeerService(h);
    quietPeer = await startPeerService(h);
    const person = newPerson();
    await h.client.register(person, as({ ip: freshIp() }));
    const res = await h.client.login({ identifier: person.username, password: person.password }, as({ ip: freshIp() }));
    user = { id: res.user!.id, accessToken: res.accessToken };
    admin = await h.client.login({ identifier: "root", password: "root passphrase for tests" }, as({ ip: freshIp() }));
  });
  after(async () => {
    await peer?.close();
    await quietPeer?.close();
    await h?.close();
  });

  /** A token signed with auth's real active key, with the given changes. */
  async function signed(opts: { claims?: Record<string, unknown>; header?: Record<string, unknown>; iss?: string; aud?: string; exp?: number | null } = {}) {
    const { kid, privateKey } = h.auth.keys.signingKey();
    const now = Math.floor(Date.now() / 1000);
    const jwt = new SignJWT({ roles: ["CUSTOMER"], ...opts.claims })
      .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid, ...opts.header })
      .setSubject(user.id)
      .setJti(randomUUID())
      .setIssuedAt(now)
      .setIssuer(opts.iss ?? h.config.jwt.issuer)
      .setAudience(opts.aud ?? h.config.jwt.audience);
    if (opts.exp !== null) jwt.setExpirationTime(opts.exp ?? now + 300);
    return jwt.sign(privateKey);
  }

  test("another service accepts auth's token and sees the caller", async () => {
    await peer.client.listMyVouchers({}, as({ token: user.accessToken }));
    assert.deepEqual(peer.callers.at(-1), { subject: user.id, roles: ["CUSTOMER"] });
    await quietPeer.client.listMyVouchers({}, as({ token: user.accessToken }));
    quietPeerFetchedAt = h.jwksFetches.at(-1) ?? Date.now();
  });

  test("each forged or unfit token is refused UNAUTHENTICATED by another service, before its handler runs", async () => {
    const { kid } = h.auth.keys.signingKey();
    const jwk = h.auth.keys.jwks().find((k) => k.kid === kid)!;
    const now = Math.floor(Date.now() / 1000);
    const base = <T extends SignJWT | UnsecuredJWT>(b: T): T =>
      b.setSubject(user.id).setJti(randomUUID()).setIssuedAt(now).setIssuer(h.config.jwt.issuer).setAudience(h.config.jwt.audience).setExpirationTime(now + 300) as T;
    const stranger = generateKeyPairSync("ed25519").privateKey;
    const variants: Record<string, [token: string, reason: string]> = {
      "alg none": [base(new UnsecuredJWT({ roles: ["ADMIN"] })).encode(), "TOKEN_INVALID"],
      "HS256 signed with the public key": [
        await base(new SignJWT({ roles: ["ADMIN"] }).setProtectedHeader({ alg: "HS256", typ: "at+jwt", kid })).sign(Buffer.from(jwk.x, "base64url")),
        "TOKEN_INVALID",
      ],
      "HS256 signed with the JWK text": [
        await base(new SignJWT({ roles: ["ADMIN"] }).setProtectedHeader({ alg: "HS256", typ: "at+jwt", kid })).sign(new TextEncoder().encode(JSON.stringify(jwk))),
        "TOKEN_INVALID",
      ],
      "unknown kid (a stranger's key)": [await base(new SignJWT({ roles: ["ADMIN"] }).setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid: randomUUID() })).sign(stranger), "TOKEN_INVALID"],
      "known kid, stranger's signature": [await base(new SignJWT({ roles: ["ADMIN"] }).setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid })).sign(stranger), "TOKEN_INVALID"],
      "jku header": [await signed({ header: { jku: `${h.url}/.well-known/jwks.json` } }), "TOKEN_INVALID"],
      "embedded jwk header": [await signed({ header: { jwk } }), "TOKEN_INVALID"],
      "missing exp": [await signed({ exp: null }), "TOKEN_INVALID"],
      expired: [await signed({ exp: now - 60 }), "TOKEN_EXPIRED"],
      "wrong iss": [await signed({ iss: "https://evil.example" }), "TOKEN_INVALID"],
      "wrong aud": [await signed({ aud: "another-app" }), "TOKEN_INVALID"],
      "wrong typ (an ID token)": [await signed({ header: { typ: "JWT" } }), "TOKEN_INVALID"],
      "tampered roles": [user.accessToken.replace(/\.([^.]+)\./, (_m, p: string) => `.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, "base64url").toString()), roles: ["ADMIN"] })).toString("base64url")}.`), "TOKEN_INVALID"],
    };
    const before = peer.handled();
    for (const [name, [token, reason]] of Object.entries(variants)) {
      await assert.doesNotReject(expectError(peer.client.listMyVouchers({}, as({ token })), Code.Unauthenticated, reason), name);
      await assert.doesNotReject(expectError(peer.client.issueVoucher({}, as({ token })), Code.Unauthenticated, reason), `${name} (service rpc)`);
    }
    assert.equal(peer.handled(), before, "no handler ran");
    // And auth itself refuses them the same way.
    for (const [name, [token, reason]] of Object.entries(variants)) {
      await assert.doesNotReject(expectError(h.client.getMe({}, as({ token })), Code.Unauthenticated, reason), `auth: ${name}`);
    }
  });

  test("GetJwks and /.well-known/jwks.json publish the same public keys, and nothing private", async () => {
    const rpc = await h.client.getJwks({});
    const http = (await (await fetch(`${h.url}/.well-known/jwks.json`)).json()) as { keys: Record<string, string>[] };
    assert.deepEqual(http.keys.map((k) => k.kid).sort(), rpc.keys.map((k) => k.kid).sort());
    assert.equal(rpc.keys.length, 2, "the active key and the next one");
    for (const k of http.keys) {
      assert.deepEqual(Object.keys(k).sort(), ["alg", "crv", "kid", "kty", "use", "x"]);
      assert.deepEqual([k.kty, k.crv, k.alg, k.use], ["OKP", "Ed25519", "EdDSA", "sig"]);
    }
    const listed = await h.client.listSigningKeys({}, as({ token: admin.accessToken }));
    assert.ok(!toJsonString(ListSigningKeysResponseSchema, listed).includes('"d"'));
    // At rest the private key is encrypted: the stored bytes are not a usable key.
    const rows = await h.auth.platform.db.selectFrom("signing_keys").select(["kid", "private_key_encrypted"]).execute();
    for (const row of rows) {
      assert.throws(() => createPrivateKey({ key: Buffer.from(row.private_key_encrypted), format: "der", type: "pkcs8" }));
      assert.ok(!Buffer.from(row.private_key_encrypted).includes(Buffer.from("302e020100300506032b6570", "hex")), "no PKCS#8 Ed25519 prefix in clear");
    }
  });

  test("service tokens: SERVICE role for good client credentials, accepted by SERVICE rpcs elsewhere; bad credentials refused", async () => {
    const tokens = createServiceTokenSource({ authUrl: h.url, ...serviceCredentials("promotion", {}) });
    const token = await tokens.token();
    assert.equal(await tokens.token(), token, "cached until near expiry");
    await peer.client.issueVoucher({}, as({ token }));
    assert.deepEqual(peer.callers.at(-1), { subject: "promotion", roles: ["SERVICE"] });
    // A customer cannot call a SERVICE rpc.
    await expectError(peer.client.issueVoucher({}, as({ token: user.accessToken })), Code.PermissionDenied, "SERVICE_REQUIRED");
    await expectError(h.client.issueServiceToken({ clientId: "promotion", clientSecret: "wrong secret" }), Code.Unauthenticated, "INVALID_CLIENT_CREDENTIALS");
    await expectError(h.client.issueServiceToken({ clientId: "nobody", clientSecret: "dev-nobody-client-secret" }), Code.Unauthenticated, "INVALID_CLIENT_CREDENTIALS");
    // A service token passes admin rpcs (the platform's rule) but may not hand out roles or rotate keys.
    await h.client.getUser({ userId: user.id }, as({ token }));
    await expectError(h.client.grantRole({ userId: user.id, role: Role.ADMIN }, as({ token })), Code.PermissionDenied, "ADMIN_REQUIRED");
    await expectError(h.client.rotateSigningKey({}, as({ token })), Code.PermissionDenied, "ADMIN_REQUIRED");
    tokens.close();
  });

  test("a closed service-token source has released its channel: asking for a token fails UNAVAILABLE", async () => {
    const tokens = createServiceTokenSource({ authUrl: h.url, ...serviceCredentials("promotion", {}) });
    tokens.close();
    const err = await tokens.token().then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(Code[err.code], Code[Code.Unavailable]);
  });

  test("rotation: the next key was published before it signs, old tokens keep working, new ones verify everywhere", async () => {
    const before = await h.client.getJwks({});
    const oldToken = user.accessToken;
    const oldKid = decodeProtectedHeader(oldToken).kid;
    const requestId = randomUUID();
    const rotated = await h.client.rotateSigningKey({ requestId }, as({ token: admin.accessToken }));
    assert.equal(rotated.previousKey?.kid, oldKid);
    assert.equal(rotated.previousKey?.state, SigningKeyState.RETIRING);
    assert.equal(rotated.newKey?.state, SigningKeyState.ACTIVE);
    assert.ok(before.keys.some((k) => k.kid === rotated.newKey?.kid), "the new signing key was already in the JWKS");
    const retireAt = Number(rotated.previousKey!.retireTime!.seconds) * 1000;
    assert.ok(retireAt - Date.now() >= 15 * 60_000, "the old key stays until every token it signed has expired");
    // A retry with the same request id does not rotate again.
    const retried = await h.client.rotateSigningKey({ requestId }, as({ token: admin.accessToken }));
    assert.equal(retried.newKey?.kid, rotated.newKey?.kid);

    const fresh = await h.client.login({ identifier: "root", password: "root passphrase for tests" }, as({ ip: freshIp() }));
    assert.equal(decodeProtectedHeader(fresh.accessToken).kid, rotated.newKey?.kid);
    await peer.client.listMyVouchers({}, as({ token: fresh.accessToken }));
    await peer.client.listMyVouchers({}, as({ token: oldToken }));
    await h.client.getMe({}, as({ token: oldToken }));

    const { signingKeys } = await h.client.listSigningKeys({ pageSize: 2 }, as({ token: admin.accessToken }));
    assert.deepEqual(signingKeys.map((k) => k.state), [SigningKeyState.PUBLISHED, SigningKeyState.ACTIVE]);
    const all = await h.client.listSigningKeys({}, as({ token: admin.accessToken }));
    assert.deepEqual(all.signingKeys.map((k) => k.state), [SigningKeyState.PUBLISHED, SigningKeyState.ACTIVE, SigningKeyState.RETIRING]);
  });

  test("a verifier meeting an unknown kid refetches: another auth replica and another service both accept a key made after they loaded", async () => {
    // Rotate twice: the key now signing did not exist when the others last loaded keys.
    await h.client.rotateSigningKey({}, as({ token: admin.accessToken }));
    const { newKey } = await h.client.rotateSigningKey({}, as({ token: admin.accessToken }));
    const token = (await h.client.login({ identifier: "root", password: "root passphrase for tests" }, as({ ip: freshIp() }))).accessToken;
    assert.equal(decodeProtectedHeader(token).kid, newKey?.kid);

    // The shared verifier refetches the JWKS on an unknown kid, at most once per 5 s
    // (jose's cooldown); the quiet service last fetched it in the first test.
    const fetchesBefore = h.jwksFetches.length;
    await sleep(Math.max(0, quietPeerFetchedAt + 5_100 - Date.now()));
    await quietPeer.client.listMyVouchers({}, as({ token }));
    assert.ok(h.jwksFetches.length > fetchesBefore, "the other service fetched the JWKS again");

    // Auth's own verifier reloads its key ring from Postgres (at most once a second).
    const replica = h.replicas[1];
    assert.equal((await replica.client.getMe({}, as({ token }))).user?.username, "root", "the second replica reloaded its key ring");
  });

  test("a retired key leaves the JWKS, and what it signed is refused by auth and by services, even where it was verified and remembered before", async () => {
    // A token of the key signing now, verified (and so remembered) by auth and by a service's
    // verifier that refetches the keys every 200 ms; then rotate and move that key's
    // retirement (normally 15 min + after the last token it signed expired) to now, as an
    // operator would for a compromised key.
    const root = () => h.client.login({ identifier: "root", password: "root passphrase for tests" }, as({ ip: freshIp() }));
    const unseen = (await root()).accessToken;
    const oldKid = decodeProtectedHeader(unseen).kid!;
    const remembering = createTokenVerifier({ issuer: h.config.jwt.issuer, audience: h.config.jwt.audience, keys: new URL(`${h.url}/.well-known/jwks.json`), jwks: { maxAgeMs: 200 } });
    assert.equal((await h.client.getMe({}, as({ token: unseen }))).user?.username, "root");
    assert.equal((await remembering.verify(unseen)).roles.includes("ADMIN"), true);
    const { previousKey } = await h.client.rotateSigningKey({}, as({ token: (await root()).accessToken }));
    assert.equal(previousKey?.kid, oldKid);
    await h.auth.platform.db.updateTable("signing_keys").set({ retire_at: new Date(Date.now() - 1_000) }).where("kid", "=", oldKid).execute();
    await h.auth.keys.reload();

    const { keys } = await h.client.getJwks({});
    assert.ok(keys.length >= 2 && !keys.some((k) => k.kid === oldKid), "the retired key is gone from the JWKS");
    await expectError(h.client.getMe({}, as({ token: unseen })), Code.Unauthenticated, "TOKEN_INVALID");
    await sleep(300); // past the service's key-set age: its next look-up refetches
    await assert.rejects(remembering.verify(unseen), (err: unknown) => err instanceof VouchError && err.reason === "TOKEN_INVALID");
    const fresh = await startPeerService(h);
    try {
      await expectError(fresh.client.listMyVouchers({}, as({ token: unseen })), Code.Unauthenticated, "TOKEN_INVALID");
      assert.equal(fresh.handled(), 0, "refused before the handler ran");
    } finally {
      await fresh.close();
    }
    const { signingKeys } = await h.client.listSigningKeys({}, as({ token: (await root()).accessToken }));
    assert.equal(signingKeys.find((k) => k.kid === oldKid)?.state, SigningKeyState.RETIRED, "still listed for operators, as retired");
  });
});
