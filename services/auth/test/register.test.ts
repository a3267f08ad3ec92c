// Registration: normalised and unique identifiers that can never be confused, field-by-field
// validation, password rules and argon2id hashes, request ids.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { parseOptions } from "@node-rs/argon2";
import { randomUUID } from "node:crypto";
import { Role } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { commonPasswordList } from "../passwords.js";
import { as, expectError, freshIp, newPerson, startAuthHarness, violationsOf, type AuthHarness } from "./harness.js";

describe("auth: registration", () => {
  let h: AuthHarness;
  before(async () => {
    h = await startAuthHarness("register", (s) => {
      s.throttle.registerPerIp = { burst: 3, perHour: 60 };
    });
  });
  after(() => h?.close());

  const register = (person: ReturnType<typeof newPerson> & { requestId?: string }, ip = freshIp()) => h.client.register(person, as({ ip }));

  test("stores the email lower-cased, the phone in E.164 and the username as typed; the account is a customer", async () => {
    const person = { ...newPerson(), phoneNumber: "+84 90 912 3456", birthday: "1990-01-31" };
    const { user } = await register(person);
    assert.ok(user);
    assert.equal(user.email, person.email.toLowerCase());
    assert.equal(user.phoneNumber, "+84909123456");
    assert.equal(user.username, person.username);
    assert.equal(user.birthday, "1990-01-31");
    assert.deepEqual(user.roles, [Role.CUSTOMER]);
    assert.equal(user.firstLoginTime, undefined, "never logged in yet");
    assert.match(user.id, /^[0-9a-f-]{36}$/);
  });

  test("bad fields are INVALID_ARGUMENT with one BadRequest violation per field", async () => {
    const err = await expectError(h.client.register({}, as({ ip: freshIp() })), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violationsOf(err), [
      ["full_name", "FULL_NAME_REQUIRED"],
      ["username", "USERNAME_REQUIRED"],
      ["email", "EMAIL_REQUIRED"],
      ["phone_number", "PHONE_NUMBER_REQUIRED"],
      ["password", "PASSWORD_TOO_SHORT"],
    ]);
    const bad = { fullName: "Ann", username: "ann_ok", email: "not-an-email", phoneNumber: "0909123456", password: "violet-otter-maps-42", birthday: "1990-02-30" };
    const err2 = await expectError(register({ ...newPerson(), ...bad }), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violationsOf(err2), [
      ["email", "EMAIL_INVALID"],
      ["phone_number", "PHONE_NUMBER_INVALID"],
      ["birthday", "BIRTHDAY_INVALID"],
    ]);
    const future = new Date(Date.now() + 86_400_000 * 2).toISOString().slice(0, 10);
    const err3 = await expectError(register({ ...newPerson(), birthday: future, phoneNumber: "+849" }), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violationsOf(err3), [
      ["phone_number", "PHONE_NUMBER_INVALID"],
      ["birthday", "BIRTHDAY_OUT_OF_RANGE"],
    ]);
  });

  test("a username can never look like an email or a phone number", async () => {
    for (const username of ["ann@example.com", "+84909123456", "84909123456", "1ann", "an"]) {
      const err = await expectError(register({ ...newPerson(), username }), Code.InvalidArgument, "INVALID_ARGUMENT");
      assert.deepEqual(violationsOf(err), [["username", "USERNAME_INVALID"]], username);
    }
  });

  test("taken identifiers are ALREADY_EXISTS naming the field, compared after normalisation", async () => {
    const first = newPerson();
    await register(first);
    const cases: [Partial<ReturnType<typeof newPerson>>, string, string][] = [
      [{ username: first.username.toUpperCase() }, "USERNAME_TAKEN", "username"],
      [{ email: `  ${first.email.toUpperCase()} ` }, "EMAIL_TAKEN", "email"],
      [{ phoneNumber: first.phoneNumber.replace(/^(\+84)(\d{2})(\d{3})/, "$1 $2 $3 ") }, "PHONE_NUMBER_TAKEN", "phone_number"],
    ];
    for (const [override, reason, field] of cases) {
      const err = await expectError(register({ ...newPerson(), ...override }), Code.AlreadyExists, reason);
      assert.match(err.rawMessage, /already used by another account/);
      assert.equal(err.findDetails(ErrorInfoSchema)[0].metadata.field, field);
    }
  });

  test("passwords: 8 to 128 characters of anything, no composition rules, common ones refused", async () => {
    assert.ok(commonPasswordList().size >= 10_000, `the common-password list has ${commonPasswordList().size} entries`);
    const reasons = async (password: string) => violationsOf(await expectError(register(newPerson(password)), Code.InvalidArgument, "INVALID_ARGUMENT"));
    assert.deepEqual(await reasons("seven77"), [["password", "PASSWORD_TOO_SHORT"]]);
    assert.deepEqual(await reasons("x".repeat(129)), [["password", "PASSWORD_TOO_LONG"]]);
    assert.deepEqual(await reasons("Password1"), [["password", "PASSWORD_TOO_COMMON"]]);
    assert.deepEqual(await reasons("qwertyuiop"), [["password", "PASSWORD_TOO_COMMON"]]);
    // Lower-case letters only, spaces, 128 characters, non-Latin: all fine.
    await register(newPerson("correct horse battery staple"));
    await register(newPerson("é".repeat(128)));
    await register(newPerson("mật khẩu của tôi"));
  });

  test("hashes are argon2id with m=19456 KiB, t=2, p=1 and a unique salt each", async () => {
    const a = newPerson("same password for both");
    const b = newPerson("same password for both");
    await register(a);
    await register(b);
    const rows = await h.auth.platform.db
      .selectFrom("users")
      .select("password_hash")
      .where("email", "in", [a.email.toLowerCase(), b.email.toLowerCase()])
      .execute();
    assert.equal(rows.length, 2);
    for (const { password_hash } of rows) {
      assert.match(password_hash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
      const params = parseOptions(password_hash);
      assert.deepEqual([params.memoryCost, params.timeCost, params.parallelism, params.saltLen], [19456, 2, 1, 16]);
    }
    const [saltA, saltB] = rows.map((r) => r.password_hash.split("$")[4]);
    assert.notEqual(saltA, saltB);
    assert.notEqual(rows[0].password_hash, rows[1].password_hash);
  });

  test("retrying with the same request_id returns the same account; another request under that id is ALREADY_EXISTS", async () => {
    const person = { ...newPerson(), requestId: randomUUID() };
    const [first, second] = await Promise.all([register(person), register(person)]);
    assert.equal(first.user?.id, second.user?.id);
    const again = await register(person);
    assert.equal(again.user?.id, first.user?.id);
    await expectError(register({ ...newPerson(), requestId: person.requestId }), Code.AlreadyExists, "REQUEST_ID_REUSED");
    await expectError(register({ ...person, password: "another password entirely" }), Code.AlreadyExists, "REQUEST_ID_REUSED");
  });

  test("registrations are rate-limited per client address with RetryInfo", async () => {
    const ip = freshIp();
    for (let i = 0; i < 3; i++) await expectError(register({ ...newPerson(), email: "bad" }, ip), Code.InvalidArgument, "INVALID_ARGUMENT");
    const err = await expectError(register(newPerson(), ip), Code.ResourceExhausted, "RATE_LIMITED");
    assert.ok(err.rawMessage.length > 0);
    await register(newPerson(), freshIp()); // another address is not affected
  });
});
