// Login throttling (GCRA in Redis): per normalised identifier, existing or not, and per
// client address; RESOURCE_EXHAUSTED with RetryInfo; never a permanent lockout.
// Limits are shortened here (burst 3, one more every 2 s) so recovery takes a moment;
// production defaults are a burst of 10 then 100 per hour per identifier.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { hashPassword, verifyPassword } from "../passwords.js";
import { as, expectError, freshIp, newPerson, retryDelayMs, sleep, startAuthHarness, type AuthHarness } from "./harness.js";

describe("auth: login throttling", () => {
  let h: AuthHarness;
  before(async () => {
    h = await startAuthHarness("throttle", (s) => {
      s.throttle.loginPerIdentifier = { burst: 3, perHour: 1_800 }; // one more every 2 s
      s.throttle.loginPerIp = { burst: 5, perHour: 1_800 };
    });
  });
  after(() => h?.close());

  const login = (identifier: string, password: string, ip = freshIp()) => h.client.login({ identifier, password }, as({ ip }));

  test("attempts on one identifier are throttled whatever its spelling, with RetryInfo; then the right password works again", async () => {
    const p = newPerson();
    await h.client.register(p, as({ ip: freshIp() }));
    for (const identifier of [p.email, p.email.toUpperCase(), `  ${p.email} `]) {
      await expectError(login(identifier, "wrong password"), Code.Unauthenticated, "INVALID_CREDENTIALS");
    }
    // The right password from a fresh address is refused too: the identifier's budget is spent.
    const err = await expectError(login(p.email, p.password), Code.ResourceExhausted, "LOGIN_THROTTLED");
    const delay = retryDelayMs(err);
    assert.ok(delay > 0 && delay <= 2_000, `RetryInfo says ${delay} ms`);
    // Other identifiers of the same account are their own subjects (one guess budget each).
    await login(p.username, p.password);
    await sleep(delay + 20);
    const res = await login(p.email, p.password);
    assert.equal(res.user?.email, p.email.toLowerCase(), "no permanent lockout");
  });

  test("unknown identifiers are throttled exactly like existing ones", async () => {
    const ghost = `ghost.${Date.now()}@example.com`;
    for (let i = 0; i < 3; i++) await expectError(login(ghost, "whatever password"), Code.Unauthenticated, "INVALID_CREDENTIALS");
    const err = await expectError(login(ghost.toUpperCase(), "whatever password"), Code.ResourceExhausted, "LOGIN_THROTTLED");
    assert.ok(retryDelayMs(err) > 0);
  });

  test("attempts from one client address are throttled across identifiers", async () => {
    const ip = freshIp();
    for (let i = 0; i < 5; i++) await expectError(login(`nobody${i}.${Date.now()}`, "whatever password", ip), Code.Unauthenticated, "INVALID_CREDENTIALS");
    const err = await expectError(login(`someone.else.${Date.now()}`, "whatever password", ip), Code.ResourceExhausted, "LOGIN_THROTTLED");
    assert.ok(retryDelayMs(err) > 0);
    await expectError(login(`someone.else.${Date.now()}`, "whatever password", freshIp()), Code.Unauthenticated, "INVALID_CREDENTIALS");
  });

  test("a throttled attempt costs no password hash", async () => {
    // CPU time of this process (auth runs in it), which other load on the machine does not inflate.
    const cpuMs = async (work: () => Promise<unknown>) => {
      const before = process.cpuUsage();
      await work();
      const used = process.cpuUsage(before);
      return (used.user + used.system) / 1000;
    };
    const hash = await hashPassword("whatever password");
    const perHash = (await cpuMs(() => Promise.all([1, 2, 3, 4].map(() => verifyPassword(hash, "whatever password"))))) / 4;
    const ghost = `burst.${Date.now()}@example.com`;
    for (let i = 0; i < 3; i++) await expectError(login(ghost, "whatever password"), Code.Unauthenticated, "INVALID_CREDENTIALS");
    const refused = await cpuMs(() =>
      Promise.all(Array.from({ length: 30 }, () => expectError(login(ghost, "whatever password"), Code.ResourceExhausted, "LOGIN_THROTTLED"))),
    );
    // A refusal costs a few ms of rpc and Redis work (client and server both run here); had
    // each one verified a password, 30 of them would cost 30 hashes on top.
    assert.ok(refused < 15 * perHash, `30 refusals used ${refused.toFixed(0)} ms of CPU; one hash uses ${perHash.toFixed(0)} ms`);
  });

  test("wrong current passwords in ChangePassword spend the same kind of budget", async () => {
    const p = newPerson();
    await h.client.register(p, as({ ip: freshIp() }));
    const { accessToken } = await login(p.username, p.password);
    const change = () => h.client.changePassword({ currentPassword: "wrong password", newPassword: "a brand new password" }, as({ ip: freshIp(), token: accessToken }));
    for (let i = 0; i < 3; i++) await expectError(change(), Code.InvalidArgument, "CURRENT_PASSWORD_INCORRECT");
    await expectError(change(), Code.ResourceExhausted, "LOGIN_THROTTLED");
  });
});
