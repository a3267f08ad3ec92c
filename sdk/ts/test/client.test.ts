// The TypeScript SDK against the real auth service (in-process on a spare port, with its
// own database, Redis prefix and stream on the real Postgres/Redis/NATS) and a second
// service that verifies auth's tokens through the JWKS, as every Vouch service does.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { newPerson, startAuthHarness, startPeerService, type AuthHarness, type PeerService } from "../../../services/auth/test/harness.js";
import { createVouchClient, type Tokens } from "../src/index.js";

let h: AuthHarness;
let peer: PeerService;

before(async () => {
  // Access tokens live 2 s, so one can really expire during a test.
  h = await startAuthHarness("sdk", (s) => {
    s.accessTokenTtlMs = 2_000;
  });
  peer = await startPeerService(h);
});
after(async () => {
  await peer?.close();
  await h?.close();
});

async function signedUp() {
  const person = newPerson();
  await h.client.register(person);
  return person;
}

/** A client whose auth is the harness and whose voucher service is the token-verifying peer. */
function client(transport: "connect" | "grpc", extra: { refreshBeforeMs?: number } = {}) {
  const seen: Tokens[] = [];
  const ended: string[] = [];
  const vouch = createVouchClient({
    baseUrl: { auth: h.url, voucher: peer.url, promotion: peer.url, provider: peer.url },
    transport,
    session: { refreshBeforeMs: extra.refreshBeforeMs ?? 0, onTokens: (t) => seen.push(t), onSessionEnded: (r) => ended.push(r) },
  });
  return { vouch, seen, ended };
}

const code = async (p: Promise<unknown>) => p.then(() => "OK", (e) => Code[ConnectError.from(e).code]);

for (const transport of ["connect", "grpc"] as const) {
  describe(`over ${transport}`, () => {
    test("login keeps the tokens and every later call carries the access token", async () => {
      const person = await signedUp();
      const { vouch, seen } = client(transport);
      assert.equal(await code(vouch.auth.getMe({})), "Unauthenticated", "no session yet");
      const login = await vouch.auth.login({ identifier: person.email, password: person.password });
      assert.equal(vouch.session.tokens()?.accessToken, login.accessToken);
      assert.equal(seen.length, 1);
      const me = await vouch.auth.getMe({});
      assert.equal(me.user?.id, login.user?.id);
      // Another service verifies the same token through auth's JWKS.
      const before = peer.handled();
      await vouch.voucher.listMyVouchers({});
      assert.equal(peer.handled(), before + 1);
      assert.equal(peer.callers.at(-1)?.subject, login.user?.id);
    });

    test("an expired access token is refreshed once and the call retried", async () => {
      const person = await signedUp();
      const { vouch, seen } = client(transport);
      const login = await vouch.auth.login({ identifier: person.username, password: person.password });
      await new Promise((r) => setTimeout(r, 2_600)); // the token expires on the server's clock
      const me = await vouch.auth.getMe({});
      assert.equal(me.user?.id, login.user?.id);
      assert.equal(seen.length, 2, "login + one refresh");
      assert.notEqual(vouch.session.tokens()?.refreshToken, login.refreshToken, "the refresh token rotated");
    });

    test("a token about to expire is refreshed before the call", async () => {
      const person = await signedUp();
      const { vouch, seen } = client(transport, { refreshBeforeMs: 60_000 }); // every 2 s token is "about to expire"
      await vouch.auth.login({ identifier: person.email, password: person.password });
      const first = vouch.session.tokens()!.accessToken;
      await vouch.voucher.listMyVouchers({});
      assert.equal(seen.length, 2);
      assert.notEqual(vouch.session.tokens()!.accessToken, first);
    });

    test("parallel calls share one refresh (a second use of the rotated token would end the session)", async () => {
      const person = await signedUp();
      const { vouch, seen, ended } = client(transport);
      await vouch.auth.login({ identifier: person.email, password: person.password });
      const t = vouch.session.tokens()!;
      vouch.session.set({ ...t, accessToken: `${t.accessToken.slice(0, -4)}AAAA` }); // a bad signature
      const seenBefore = seen.length;
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => code(i % 2 ? vouch.auth.getMe({}) : vouch.voucher.listMyVouchers({}))));
      assert.deepEqual(new Set(results), new Set(["OK"]));
      assert.equal(seen.length - seenBefore, 1, "exactly one RefreshToken call");
      assert.deepEqual(ended, []);
      assert.equal(await code(vouch.auth.getMe({})), "OK", "the session is still alive");
    });

    test("a refused refresh ends the session and the call fails UNAUTHENTICATED", async () => {
      const person = await signedUp();
      const { vouch, ended } = client(transport);
      await vouch.auth.login({ identifier: person.email, password: person.password });
      const t = vouch.session.tokens()!;
      await h.client.logout({ refreshToken: t.refreshToken }); // ended elsewhere
      vouch.session.set({ ...t, accessToken: "not-a-token" });
      assert.equal(await code(vouch.auth.getMe({})), "Unauthenticated");
      assert.deepEqual(ended, ["refresh_refused"]);
      assert.equal(vouch.session.tokens(), undefined);
    });

    test("public rpcs go without the token, and logout forgets the session", async () => {
      const person = await signedUp();
      const { vouch, ended } = client(transport);
      vouch.session.set({ accessToken: "garbage", refreshToken: "garbage" });
      // Login is ACCESS_PUBLIC: no Authorization header, so the garbage cannot get in the way.
      await vouch.auth.login({ identifier: person.email, password: person.password });
      assert.equal(await code(vouch.auth.getMe({})), "OK");
      await vouch.session.logout();
      assert.deepEqual(ended, ["logout"]);
      assert.equal(vouch.session.tokens(), undefined);
      assert.equal(await code(vouch.auth.getMe({})), "Unauthenticated");
    });
  });
}
