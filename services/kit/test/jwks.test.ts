// Token verification against auth's JWKS over HTTP while auth is up, down, or answering badly.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from "jose";
import { createTokenVerifier } from "../auth.js";
import { Code, VouchError } from "../errors.js";

const ISSUER = "https://auth.jwks-test";
const AUDIENCE = "vouch-jwks-test";

let server: Server;
let url: URL;
/** What the JWKS endpoint does right now. */
let answer: "keys" | "500" | "garbage" = "keys";
let fetches = 0;
const signers: Record<string, { privateKey: CryptoKey; jwk: JWK }> = {};

async function addKey(kid: string) {
  const pair = await generateKeyPair("EdDSA", { extractable: true });
  signers[kid] = { privateKey: pair.privateKey, jwk: { ...(await exportJWK(pair.publicKey)), kid, alg: "EdDSA", use: "sig" } };
}

const token = (kid: string) =>
  new SignJWT({ roles: ["CUSTOMER"] })
    .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setSubject("user-1")
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime("5m")
    .sign(signers[kid].privateKey);

before(async () => {
  await addKey("k1");
  server = createServer((_req, res) => {
    fetches++;
    if (answer === "500") return void res.writeHead(500).end("down");
    if (answer === "garbage") return void res.writeHead(200, { "content-type": "application/json" }).end("{not json");
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: Object.values(signers).map((s) => s.jwk) }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`);
});
after(() => server.close());

/** A verifier whose key set is stale at once, so every new token makes it try to refetch. */
const verifier = (jwksUrl = url) => createTokenVerifier({ issuer: ISSUER, audience: AUDIENCE, keys: jwksUrl, jwks: { maxAgeMs: 1, timeoutMs: 500 }, cacheSize: 0 });

const isUnavailable = (err: unknown) => err instanceof VouchError && err.code === Code.Unavailable && err.reason === "JWKS_UNAVAILABLE";

test("while auth's JWKS cannot be fetched, tokens signed with a key fetched before still verify", async () => {
  answer = "keys";
  const v = verifier();
  assert.equal((await v.verify(await token("k1"))).subject, "user-1");
  for (const outage of ["500", "garbage"] as const) {
    answer = outage;
    const before = fetches;
    await new Promise((r) => setTimeout(r, 5));
    assert.equal((await v.verify(await token("k1"))).subject, "user-1", `JWKS answering ${outage}`);
    assert.ok(fetches > before, "the stale key set was refetched, and the fetch failed");
  }
  answer = "keys";
});

test("an unreachable JWKS with no key set fetched yet is UNAVAILABLE (retryable), not INTERNAL or UNAUTHENTICATED", async () => {
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  await assert.rejects(verifier(new URL(`http://127.0.0.1:${port}/.well-known/jwks.json`)).verify(await token("k1")), isUnavailable);

  answer = "500";
  await assert.rejects(verifier().verify(await token("k1")), isUnavailable);
  answer = "keys";
});

test("a key rotated in during an outage is UNAVAILABLE until auth answers again, then verifies", async () => {
  answer = "keys";
  const v = verifier();
  await v.verify(await token("k1"));
  await addKey("k2");
  answer = "500";
  await assert.rejects(v.verify(await token("k2")), isUnavailable);
  answer = "keys";
  await new Promise((r) => setTimeout(r, 5_100)); // jose's cooldown between refetches
  assert.equal((await v.verify(await token("k2"))).subject, "user-1");
});

test("a token signed with a key auth never published is still UNAUTHENTICATED", async () => {
  answer = "keys";
  await addKey("k-unpublished");
  const unpublished = await token("k-unpublished");
  delete signers["k-unpublished"];
  await assert.rejects(verifier().verify(unpublished), (err: unknown) => err instanceof VouchError && err.code === Code.Unauthenticated && err.reason === "TOKEN_INVALID");
});
