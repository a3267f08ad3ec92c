// What auth writes to its log, read from a real auth process's stdout: a reused refresh
// token is logged as a warning naming the session and the user, and no password, token or
// private key ever appears in a line, whatever the rpc (register, logins, refreshes, a key
// rotation, a password change).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { ADMIN, startTestPlatform, type TestPlatform } from "../../edge/test/platform.js";
import { as, expectError, freshIp, newPerson } from "./harness.js";

let platform: TestPlatform;
let auth: Client<typeof AuthService>;

before(async () => {
  platform = await startTestPlatform("auth_logs", ["auth"], { auth: { LOG_LEVEL: "info", TRUST_FORWARDED_FOR: "true" } });
  auth = createClient(AuthService, createGrpcTransport({ baseUrl: platform.urls.auth! }));
});
after(() => platform?.stop());

/** The JSON lines auth has written so far. */
const lines = () =>
  platform
    .output()
    .split("\n")
    .map((l) => l.replace(/^\[auth\] /, ""))
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test("a reused refresh token is logged as a warning, and no password, token or private key reaches the log", async () => {
  const person = newPerson();
  const { user } = await auth.register(person, as({ ip: freshIp() }));
  const first = await auth.login({ identifier: person.username, password: person.password }, as({ ip: freshIp() }));
  const second = await auth.refreshToken({ refreshToken: first.refreshToken });
  await expectError(auth.refreshToken({ refreshToken: first.refreshToken }), Code.Unauthenticated, "REFRESH_TOKEN_REUSED");
  await expectError(auth.login({ identifier: person.username, password: "a wrong password here" }, as({ ip: freshIp() })), Code.Unauthenticated, "INVALID_CREDENTIALS");
  const admin = await auth.login({ identifier: ADMIN.username, password: ADMIN.password }, as({ ip: freshIp() }));
  await auth.rotateSigningKey({}, as({ token: admin.accessToken }));
  const again = await auth.login({ identifier: person.username, password: person.password }, as({ ip: freshIp() }));
  const changed = await auth.changePassword({ currentPassword: person.password, newPassword: "a fresh passphrase now" }, as({ ip: freshIp(), token: again.accessToken }));

  let logged: Record<string, unknown>[] = [];
  for (const deadline = Date.now() + 5_000; ; await new Promise((r) => setTimeout(r, 100))) {
    logged = lines();
    if (logged.some((l) => /password changed/.test(String(l.msg))) || Date.now() > deadline) break;
  }
  const reuse = logged.find((l) => l.msg === "refresh token reused: session revoked");
  assert.ok(reuse, `the reuse is logged:\n${platform.output().slice(-3_000)}`);
  assert.equal(reuse.level, 40, "as a warning");
  assert.equal(reuse.userId, user!.id);
  assert.ok(reuse.sessionId);
  assert.ok(logged.some((l) => /password changed/.test(String(l.msg))), "the password change is logged");

  const text = platform.output();
  assert.ok(text.length < 20_000, "the whole log is kept (the platform keeps the last 20,000 characters)");
  const secrets = {
    "the password": person.password,
    "the new password": "a fresh passphrase now",
    "the wrong password": "a wrong password here",
    "the admin's password": ADMIN.password,
    ...Object.fromEntries([first, second, admin, again, changed].flatMap((s, i) => [[`access token ${i}`, s.accessToken], [`refresh token ${i}`, s.refreshToken]])),
  };
  for (const [what, secret] of Object.entries(secrets)) assert.ok(!text.includes(secret), `${what} is not in the log`);
  assert.doesNotMatch(text, /PRIVATE KEY|"d":"/, "no private key, PEM or JWK");
});
