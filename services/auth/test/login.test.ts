// Login: any identifier, the tokens it returns, no account enumeration, the first login
// recorded once and announced once through the outbox, old hashes upgraded.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { parseOptions } from "@node-rs/argon2";
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from "jose";
import { UserLoggedInSchema, type UserLoggedIn } from "../../../gen/vouch/events/v1/events_pb.js";
import { ACCESS_TOKEN_ALGORITHMS, ACCESS_TOKEN_TYPE } from "../../kit/auth.js";
import { hashPassword } from "../passwords.js";
import { as, expectError, freshIp, newPerson, sleep, startAuthHarness, type AuthHarness } from "./harness.js";

describe("auth: login", () => {
  let h: AuthHarness;
  before(async () => {
    h = await startAuthHarness("login", (s) => {
      // 20 concurrent logins of one user must not hit the per-identifier throttle here.
      s.throttle.loginPerIdentifier = { burst: 100, perHour: 10_000 };
    });
  });
  after(() => h?.close());

  async function registered(password = "violet-otter-maps-42") {
    const person = newPerson(password);
    const { user } = await h.client.register(person, as({ ip: freshIp() }));
    return { ...person, id: user!.id };
  }

  /** Every user_logged_in event of `userId` in this file's stream, once `count` of them are there. */
  async function loginEvents(userId: string, count: number, timeoutMs = 10_000): Promise<UserLoggedIn[]> {
    const jsm = await h.nc.jetstreamManager();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await jsm.streams.info(h.config.natsStream);
      const events: UserLoggedIn[] = [];
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
        const m = await jsm.streams.getMessage(h.config.natsStream, { seq }).catch(() => undefined);
        if (m?.subject !== h.loginSubject) continue;
        const event = fromBinary(UserLoggedInSchema, m.data);
        if (event.userId === userId) events.push(event);
      }
      if (events.length >= count || Date.now() > deadline) return events;
      await sleep(100);
    }
  }

  test("logs in with the username, the email or the phone number, each normalised", async () => {
    const p = await registered();
    const national = p.phoneNumber.replace(/^\+84(\d{2})(\d{3})(\d{4})$/, "+84 $1 $2 $3");
    for (const identifier of [p.username.toLowerCase(), ` ${p.username.toUpperCase()} `, p.email.toUpperCase(), p.phoneNumber, national]) {
      const res = await h.client.login({ identifier, password: p.password }, as({ ip: freshIp() }));
      assert.equal(res.user?.id, p.id, identifier);
    }
  });

  test("the access token is an EdDSA at+jwt with kid, iss, aud, sub, roles, phone_number, jti, iat and exp at most 15 minutes on", async () => {
    const p = await registered();
    const res = await h.client.login({ identifier: p.email, password: p.password }, as({ ip: freshIp() }));
    const header = decodeProtectedHeader(res.accessToken);
    assert.deepEqual(Object.keys(header).sort(), ["alg", "kid", "typ"]);
    assert.equal(header.alg, "EdDSA");
    assert.equal(header.typ, "at+jwt");
    const { keys } = await h.client.getJwks({});
    assert.ok(keys.some((k) => k.kid === header.kid), "the kid is in the JWKS");
    const jwks = createLocalJWKSet({ keys: keys.map((k) => ({ kty: k.kty, crv: k.crv, x: k.x, kid: k.kid, alg: k.alg, use: k.use })) });
    const { payload } = await jwtVerify(res.accessToken, jwks, {
      issuer: h.config.jwt.issuer,
      audience: h.config.jwt.audience,
      algorithms: ACCESS_TOKEN_ALGORITHMS,
      typ: ACCESS_TOKEN_TYPE,
    });
    assert.equal(payload.sub, p.id);
    assert.deepEqual(payload.roles, ["CUSTOMER"]);
    assert.equal(payload.phone_number, p.phoneNumber);
    assert.match(String(payload.jti), /^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    const lifetime = Number(payload.exp) - Number(payload.iat);
    assert.ok(lifetime > 0 && lifetime <= 15 * 60, `exp - iat = ${lifetime} s`);
    assert.ok(Math.abs(Number(payload.iat) * 1000 - Date.now()) < 5_000);
    assert.equal(timestampDate(res.accessTokenExpireTime!).getTime(), Number(payload.exp) * 1000);
  });

  test("the refresh token is 256 random bits, stored only as its SHA-256 hash", async () => {
    const p = await registered();
    const a = await h.client.login({ identifier: p.username, password: p.password }, as({ ip: freshIp() }));
    const b = await h.client.login({ identifier: p.username, password: p.password }, as({ ip: freshIp() }));
    for (const t of [a.refreshToken, b.refreshToken]) {
      assert.match(t, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(Buffer.from(t, "base64url").length, 32);
    }
    assert.notEqual(a.refreshToken, b.refreshToken);
    const rows = await h.auth.platform.db.selectFrom("refresh_tokens").selectAll().execute();
    const stored = rows.map((r) => Buffer.from(r.token_hash).toString("hex"));
    assert.ok(stored.includes(createHash("sha256").update(a.refreshToken).digest("hex")));
    const dump = JSON.stringify(await h.auth.platform.db.selectFrom("sessions").selectAll().execute()) + JSON.stringify(rows);
    assert.ok(!dump.includes(a.refreshToken) && !dump.includes(Buffer.from(a.refreshToken, "base64url").toString("hex")), "the token itself is nowhere");
    assert.ok(timestampDate(a.refreshTokenExpireTime!).getTime() > Date.now());
  });

  test("an unknown identifier and a wrong password give the same code, reason and message, in similar time", async () => {
    const p = await registered();
    const attempts = [
      { identifier: p.username, password: "not the password" },
      { identifier: `nobody${p.username}`, password: "not the password" },
      { identifier: `nobody.${p.email}`, password: p.password },
      { identifier: "+84909999999", password: p.password },
    ];
    const timings: number[][] = [[], []];
    const seen = new Set<string>();
    for (let round = 0; round < 4; round++) {
      for (const [i, attempt] of attempts.entries()) {
        const started = performance.now();
        const err = await expectError(h.client.login(attempt, as({ ip: freshIp() })), Code.Unauthenticated, "INVALID_CREDENTIALS");
        timings[i === 0 ? 0 : 1].push(performance.now() - started);
        seen.add(JSON.stringify([err.code, err.rawMessage, err.details.length]));
      }
    }
    assert.equal(seen.size, 1, `one answer for all: ${[...seen].join(" | ")}`);
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const [wrongPassword, unknown] = timings.map(median);
    // Without the dummy hash an unknown identifier answers in ~1 ms against ~50 ms.
    assert.ok(unknown > wrongPassword / 3 && unknown < wrongPassword * 3, `median ${wrongPassword.toFixed(1)} ms (wrong password) vs ${unknown.toFixed(1)} ms (unknown)`);
  });

  test("20 concurrent first logins of one new user: all succeed, exactly one is first_login, exactly one first_login event", async () => {
    const p = await registered();
    const results = await Promise.all(
      Array.from({ length: 20 }, () => h.client.login({ identifier: p.username, password: p.password }, as({ ip: freshIp() }))),
    );
    assert.equal(results.filter((r) => r.firstLogin).length, 1);
    const events = await loginEvents(p.id, 20);
    assert.equal(events.length, 20, "every login emits user_logged_in");
    assert.equal(events.filter((e) => e.firstLogin).length, 1, "exactly one first_login: true");
    const row = await h.auth.platform.db.selectFrom("users").select(["first_login_at", "last_login_at"]).where("id", "=", p.id).executeTakeFirstOrThrow();
    assert.ok(row.first_login_at && row.last_login_at && row.first_login_at <= row.last_login_at);
  });

  test("later logins report first_login false, keep first_login_time, and emit first_login false", async () => {
    const p = await registered();
    const first = await h.client.login({ identifier: p.email, password: p.password }, as({ ip: freshIp() }));
    const second = await h.client.login({ identifier: p.email, password: p.password }, as({ ip: freshIp() }));
    assert.deepEqual([first.firstLogin, second.firstLogin], [true, false]);
    assert.deepEqual(second.user?.firstLoginTime, first.user?.firstLoginTime);
    assert.ok(timestampDate(second.user!.lastLoginTime!) >= timestampDate(first.user!.lastLoginTime!));
    const events = await loginEvents(p.id, 2);
    assert.deepEqual(events.map((e) => e.firstLogin), [true, false]);
    assert.ok(events.every((e) => e.loginTime !== undefined));
  });

  test("a hash made with weaker parameters is upgraded to the current ones on the next successful login", async () => {
    const p = await registered();
    const weak = await hashPassword(p.password, { memoryCost: 8_192, timeCost: 1, parallelism: 1 });
    await h.auth.platform.db.updateTable("users").set({ password_hash: weak }).where("id", "=", p.id).execute();
    await expectError(h.client.login({ identifier: p.username, password: "wrong password" }, as({ ip: freshIp() })), Code.Unauthenticated, "INVALID_CREDENTIALS");
    const still = await h.auth.platform.db.selectFrom("users").select("password_hash").where("id", "=", p.id).executeTakeFirstOrThrow();
    assert.equal(still.password_hash, weak, "a failed login changes nothing");
    await h.client.login({ identifier: p.username, password: p.password }, as({ ip: freshIp() }));
    const row = await h.auth.platform.db.selectFrom("users").select("password_hash").where("id", "=", p.id).executeTakeFirstOrThrow();
    const params = parseOptions(row.password_hash);
    assert.deepEqual([params.memoryCost, params.timeCost, params.parallelism], [19456, 2, 1]);
    await h.client.login({ identifier: p.username, password: p.password }, as({ ip: freshIp() })); // and it still works
  });
});
