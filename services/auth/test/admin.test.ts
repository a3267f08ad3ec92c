// Profiles and administration: GetMe / UpdateMe, the admin bootstrapped from the
// environment, listing and searching users, granting and revoking ADMIN.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { Role } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { createLogger } from "../../kit/log.js";
import { bootstrapAdmin } from "../bootstrap.js";
import { loadAuthSettings } from "../settings.js";
import { as, expectError, freshIp, newPerson, startAuthHarness, startPeerService, violationsOf, type AuthHarness, type PeerService } from "./harness.js";

const ADMIN_ENV = {
  AUTH_ADMIN_USERNAME: "operator",
  AUTH_ADMIN_EMAIL: "Operator@Vouch.Test",
  AUTH_ADMIN_PHONE: "+84 90 000 0002",
  AUTH_ADMIN_FULL_NAME: "First Operator",
  AUTH_ADMIN_PASSWORD: "operator passphrase for tests",
};

describe("auth: profiles and administration", () => {
  let h: AuthHarness;
  let peer: PeerService;
  let adminToken: string;
  let adminId: string;

  before(async () => {
    h = await startAuthHarness("admin", (s) => {
      s.admin = loadAuthSettings(ADMIN_ENV).admin;
    });
    peer = await startPeerService(h);
    const res = await h.client.login({ identifier: "operator", password: ADMIN_ENV.AUTH_ADMIN_PASSWORD }, as({ ip: freshIp() }));
    adminToken = res.accessToken;
    adminId = res.user!.id;
  });
  after(async () => {
    await peer?.close();
    await h?.close();
  });

  async function signedIn(overrides: Partial<ReturnType<typeof newPerson>> = {}) {
    const person = { ...newPerson(), ...overrides };
    await h.client.register(person, as({ ip: freshIp() }));
    const res = await h.client.login({ identifier: person.email, password: person.password }, as({ ip: freshIp() }));
    return { ...person, id: res.user!.id, token: res.accessToken };
  }
  const admin = () => as({ token: adminToken });

  test("the admin described by AUTH_ADMIN_* is created on first start, normalised, and only once", async () => {
    const { user } = await h.client.getMe({}, admin());
    assert.deepEqual([user?.username, user?.email, user?.phoneNumber, user?.fullName], ["operator", "operator@vouch.test", "+84900000002", "First Operator"]);
    assert.deepEqual(user?.roles, [Role.CUSTOMER, Role.ADMIN]);
    const log = createLogger("test", "silent");
    // Restarts, or replicas starting together, find an admin and do nothing.
    const again = await Promise.all([bootstrapAdmin(h.auth.platform.db, h.settings.admin, log), bootstrapAdmin(h.auth.platform.db, h.settings.admin, log)]);
    assert.deepEqual(again, ["admin-exists", "admin-exists"]);
    const admins = await h.client.listUsers({ role: Role.ADMIN }, admin());
    assert.equal(admins.users.length, 1);
    // Without AUTH_ADMIN_PASSWORD nothing is bootstrapped.
    assert.equal(loadAuthSettings({ ...ADMIN_ENV, AUTH_ADMIN_PASSWORD: "" }).admin, undefined);
  });

  test("GetMe returns the caller's profile; UpdateMe changes only the masked fields, normalised", async () => {
    const s = await signedIn();
    const me = (await h.client.getMe({}, as({ token: s.token }))).user!;
    assert.equal(me.id, s.id);
    const mask = create(FieldMaskSchema, { paths: ["full_name", "email", "phone_number", "birthday"] });
    const updated = (
      await h.client.updateMe(
        { user: { fullName: "  New Name  ", email: `NEW.${s.email}`, phoneNumber: "+84 90 555 1234", birthday: "2000-02-29", username: "ignored-not-in-mask" }, updateMask: mask },
        as({ token: s.token }),
      )
    ).user!;
    assert.deepEqual(
      [updated.fullName, updated.email, updated.phoneNumber, updated.birthday, updated.username],
      ["New Name", `new.${s.email.toLowerCase()}`, "+84905551234", "2000-02-29", s.username],
    );
    // The new email signs in; the old one no longer does.
    await h.client.login({ identifier: updated.email, password: s.password }, as({ ip: freshIp() }));
    await expectError(h.client.login({ identifier: s.email, password: s.password }, as({ ip: freshIp() })), Code.Unauthenticated, "INVALID_CREDENTIALS");
  });

  test("UpdateMe refuses an empty or unknown mask, bad values and identifiers taken by someone else", async () => {
    const s = await signedIn();
    const other = await signedIn();
    const token = as({ token: s.token });
    await expectError(h.client.updateMe({ user: { fullName: "x" } }, token), Code.InvalidArgument, "INVALID_ARGUMENT");
    const unknown = await expectError(h.client.updateMe({ user: {}, updateMask: create(FieldMaskSchema, { paths: ["roles"] }) }, token), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violationsOf(unknown), [["update_mask", "UPDATE_MASK_INVALID"]]);
    const bad = await expectError(
      h.client.updateMe({ user: { username: "has@sign", birthday: "31/01/1990" }, updateMask: create(FieldMaskSchema, { paths: ["username", "birthday"] }) }, token),
      Code.InvalidArgument,
      "INVALID_ARGUMENT",
    );
    assert.deepEqual(violationsOf(bad), [["user.username", "USERNAME_INVALID"], ["user.birthday", "BIRTHDAY_INVALID"]]);
    await expectError(h.client.updateMe({ user: { username: other.username.toLowerCase() }, updateMask: create(FieldMaskSchema, { paths: ["username"] }) }, token), Code.AlreadyExists, "USERNAME_TAKEN");
    await expectError(h.client.updateMe({ user: { phoneNumber: other.phoneNumber }, updateMask: create(FieldMaskSchema, { paths: ["phone_number"] }) }, token), Code.AlreadyExists, "PHONE_NUMBER_TAKEN");
  });

  test("admin rpcs refuse customers with PERMISSION_DENIED and anonymous callers with UNAUTHENTICATED", async () => {
    const s = await signedIn();
    await expectError(h.client.listUsers({}, as({ token: s.token })), Code.PermissionDenied, "ADMIN_REQUIRED");
    await expectError(h.client.grantRole({ userId: s.id, role: Role.ADMIN }, as({ token: s.token })), Code.PermissionDenied, "ADMIN_REQUIRED");
    await expectError(h.client.listUsers({}), Code.Unauthenticated, "TOKEN_MISSING");
    await expectError(h.client.getUser({ userId: "nope" }, admin()), Code.NotFound, "USER_NOT_FOUND");
  });

  test("ListUsers pages newest first and searches prefixes of username, email, phone and name words", async () => {
    const tag = `zq${Date.now().toString(36)}`;
    const people = [];
    for (let i = 0; i < 5; i++) people.push(await signedIn({ fullName: `Ada ${tag}${i} Lovelace`, username: `${tag}u${i}`, email: `${tag}.${i}@example.com` }));
    const byTag = async (query: string, pageSize = 0, pageToken = "") => h.client.listUsers({ query, pageSize, pageToken }, admin());

    const page1 = await byTag(tag.toUpperCase(), 2);
    assert.deepEqual(page1.users.map((u) => u.username), [`${tag}u4`, `${tag}u3`]);
    const page2 = await byTag(tag.toUpperCase(), 2, page1.nextPageToken);
    const page3 = await byTag(tag.toUpperCase(), 2, page2.nextPageToken);
    assert.deepEqual([...page2.users, ...page3.users].map((u) => u.username), [`${tag}u2`, `${tag}u1`, `${tag}u0`]);
    assert.equal(page3.nextPageToken, "");

    assert.deepEqual((await byTag(`${tag}2`)).users.map((u) => u.username), [`${tag}u2`], "a word of the full name");
    assert.deepEqual((await byTag(`${tag}.3@`)).users.map((u) => u.username), [`${tag}u3`], "an email prefix");
    assert.deepEqual((await byTag(people[1].phoneNumber)).users.map((u) => u.username), [`${tag}u1`], "a phone number");
    assert.equal((await byTag(`${tag}%`)).users.length, 0, "LIKE wildcards are literal");

    const err = await expectError(byTag("something else", 2, page1.nextPageToken), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violationsOf(err), [["page_token", "PAGE_TOKEN_INVALID"]]);
    await expectError(h.client.listUsers({ pageSize: -1 }, admin()), Code.InvalidArgument, "INVALID_ARGUMENT");
  });

  test("GrantRole makes an admin; RevokeRole takes it back and voids their tokens everywhere at once", async () => {
    const s = await signedIn();
    const granted = await h.client.grantRole({ userId: s.id, role: Role.ADMIN }, admin());
    assert.deepEqual(granted.user?.roles, [Role.CUSTOMER, Role.ADMIN]);
    await h.client.grantRole({ userId: s.id, role: Role.ADMIN }, admin()); // idempotent
    // Existing tokens keep their old roles until refreshed; a new login carries ADMIN.
    await expectError(h.client.listUsers({}, as({ token: s.token })), Code.PermissionDenied, "ADMIN_REQUIRED");
    const asAdmin = await h.client.login({ identifier: s.username, password: s.password }, as({ ip: freshIp() }));
    await h.client.listUsers({ pageSize: 1 }, as({ token: asAdmin.accessToken }));
    await peer.client.listMyVouchers({}, as({ token: asAdmin.accessToken }));

    const revoked = await h.client.revokeRole({ userId: s.id, role: Role.ADMIN }, admin());
    assert.deepEqual(revoked.user?.roles, [Role.CUSTOMER]);
    await expectError(h.client.listUsers({}, as({ token: asAdmin.accessToken })), Code.Unauthenticated, "TOKEN_REVOKED");
    await expectError(peer.client.listMyVouchers({}, as({ token: asAdmin.accessToken })), Code.Unauthenticated, "TOKEN_REVOKED");
    // Their session lives on, as a customer.
    const refreshed = await h.client.refreshToken({ refreshToken: asAdmin.refreshToken });
    await expectError(h.client.listUsers({}, as({ token: refreshed.accessToken })), Code.PermissionDenied, "ADMIN_REQUIRED");
    await h.client.revokeRole({ userId: s.id, role: Role.ADMIN }, admin()); // idempotent
  });

  test("only ROLE_ADMIN can be granted or revoked, and the last admin cannot lose it", async () => {
    const s = await signedIn();
    await expectError(h.client.grantRole({ userId: s.id, role: Role.SERVICE }, admin()), Code.InvalidArgument, "INVALID_ARGUMENT");
    const err = await expectError(h.client.grantRole({ userId: s.id, role: Role.CUSTOMER }, admin()), Code.InvalidArgument, "INVALID_ARGUMENT");
    assert.deepEqual(violationsOf(err), [["role", "ROLE_NOT_GRANTABLE"]]);
    await expectError(h.client.grantRole({ userId: "no-such-user", role: Role.ADMIN }, admin()), Code.NotFound, "USER_NOT_FOUND");
    await expectError(h.client.revokeRole({ userId: adminId, role: Role.ADMIN }, admin()), Code.FailedPrecondition, "LAST_ADMIN");

    // Two admins revoking each other at once: exactly one succeeds, one admin remains.
    await h.client.grantRole({ userId: s.id, role: Role.ADMIN }, admin());
    const second = await h.client.login({ identifier: s.username, password: s.password }, as({ ip: freshIp() }));
    const outcomes = await Promise.allSettled([
      h.client.revokeRole({ userId: s.id, role: Role.ADMIN }, admin()),
      h.client.revokeRole({ userId: adminId, role: Role.ADMIN }, as({ token: second.accessToken })),
    ]);
    assert.equal(outcomes.filter((o) => o.status === "fulfilled").length, 1);
    const { users } = await h.client.listUsers({ role: Role.ADMIN }, outcomes[0].status === "fulfilled" ? admin() : as({ token: second.accessToken }));
    assert.equal(users.length, 1);
  });
});
