// Sessions: refresh-token rotation, reuse detection, concurrency, expiry, logout, and the
// password change that ends every session and voids earlier access tokens everywhere.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { sql } from "kysely";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { resyncRevocations } from "../housekeeping.js";
import { as, expectError, freshIp, newPerson, startAuthHarness, startPeerService, type AuthHarness, type PeerService } from "./harness.js";

describe("auth: sessions", () => {
  let h: AuthHarness;
  let peer: PeerService;
  before(async () => {
    h = await startAuthHarness("sessions");
    peer = await startPeerService(h);
  });
  after(async () => {
    await peer?.close();
    await h?.close();
  });

  async function signedIn(password = "violet-otter-maps-42") {
    const person = newPerson(password);
    await h.client.register(person, as({ ip: freshIp() }));
    const res = await h.client.login({ identifier: person.username, password }, as({ ip: freshIp() }));
    return { ...person, id: res.user!.id, accessToken: res.accessToken, refreshToken: res.refreshToken };
  }
  const refresh = (refreshToken: string) => h.client.refreshToken({ refreshToken });
  const sessionOf = (userId: string) => h.auth.platform.db.selectFrom("sessions").selectAll().where("user_id", "=", userId).execute();

  test("a refresh rotates: a new access and refresh token, the presented one stops working", async () => {
    const s = await signedIn();
    const next = await refresh(s.refreshToken);
    assert.notEqual(next.refreshToken, s.refreshToken);
    assert.match(next.refreshToken, /^[A-Za-z0-9_-]{43}$/);
    const me = await h.client.getMe({}, as({ token: next.accessToken }));
    assert.equal(me.user?.id, s.id);
    const third = await refresh(next.refreshToken);
    assert.ok(timestampDate(third.refreshTokenExpireTime!) >= timestampDate(next.refreshTokenExpireTime!), "use extends the idle expiry");
    assert.equal((await sessionOf(s.id)).length, 1, "one family throughout");
  });

  test("presenting an already-rotated refresh token revokes its whole family and is recorded", async () => {
    const s = await signedIn();
    const b = await refresh(s.refreshToken);
    const c = await refresh(b.refreshToken);
    await expectError(refresh(s.refreshToken), Code.Unauthenticated, "REFRESH_TOKEN_REUSED");
    // The newest token of the family, never used, is dead too.
    await expectError(refresh(c.refreshToken), Code.Unauthenticated, "REFRESH_TOKEN_INVALID");
    const [session] = await sessionOf(s.id);
    assert.ok(session.revoked_at);
    assert.equal(session.revoke_reason, "refresh_token_reused");
    // Other families of the same user are untouched.
    const other = await h.client.login({ identifier: s.email, password: s.password }, as({ ip: freshIp() }));
    await refresh(other.refreshToken);
  });

  test("50 parallel refreshes of one token: exactly one succeeds, and the 49 reuses end the family, the winner's new token too", async () => {
    const s = await signedIn();
    let winner: string | undefined;
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, () =>
        refresh(s.refreshToken).then(
          (r) => ((winner = r.refreshToken), "ok"),
          (e: unknown) => (e instanceof ConnectError ? e.findDetails(ErrorInfoSchema)[0]?.reason : String(e)),
        ),
      ),
    );
    assert.equal(outcomes.filter((o) => o === "ok").length, 1, outcomes.join(","));
    assert.deepEqual([...new Set(outcomes.filter((o) => o !== "ok"))], ["REFRESH_TOKEN_REUSED"]);
    const tokens = await h.auth.platform.db
      .selectFrom("refresh_tokens")
      .innerJoin("sessions", "sessions.id", "refresh_tokens.session_id")
      .select("refresh_tokens.rotated_at")
      .where("sessions.user_id", "=", s.id)
      .execute();
    assert.equal(tokens.length, 2, "the original and exactly one successor");
    // Each loser presented an already-rotated token, which is what a stolen token looks like:
    // clients must refresh one at a time (the console does, web/src/session.ts).
    await expectError(refresh(winner!), Code.Unauthenticated, "REFRESH_TOKEN_INVALID");
  });

  test("a session ends after its idle expiry, and after its absolute expiry however often it is used", async () => {
    const idle = await signedIn();
    await h.auth.platform.db.updateTable("sessions").set({ idle_expires_at: sql`now() - interval '1 second'` }).where("user_id", "=", idle.id).execute();
    await expectError(refresh(idle.refreshToken), Code.Unauthenticated, "SESSION_EXPIRED");

    const busy = await signedIn();
    const used = await refresh(busy.refreshToken);
    await h.auth.platform.db
      .updateTable("sessions")
      .set({ expires_at: sql`now() - interval '1 second'`, idle_expires_at: sql`now() - interval '1 second'` })
      .where("user_id", "=", busy.id)
      .execute();
    await expectError(refresh(used.refreshToken), Code.Unauthenticated, "SESSION_EXPIRED");
    const [session] = await sessionOf(busy.id);
    assert.equal(session.revoke_reason, "expired");
    // The idle expiry never passes the absolute one (a database constraint).
    const absoluteTtlMs = h.settings.sessionAbsoluteTtlMs;
    const fresh = await signedIn();
    const [row] = await sessionOf(fresh.id);
    assert.ok(row.idle_expires_at <= row.expires_at);
    assert.ok(Math.abs(row.expires_at.getTime() - row.created_at.getTime() - absoluteTtlMs) < 5_000);
  });

  test("logout ends the session (any token of it works, twice is fine); garbage is REFRESH_TOKEN_INVALID", async () => {
    const s = await signedIn();
    const next = await refresh(s.refreshToken);
    await h.client.logout({ refreshToken: next.refreshToken });
    await h.client.logout({ refreshToken: next.refreshToken });
    await h.client.logout({ refreshToken: s.refreshToken });
    await expectError(refresh(next.refreshToken), Code.Unauthenticated, "REFRESH_TOKEN_INVALID");
    await expectError(h.client.logout({ refreshToken: "not-a-token" }), Code.Unauthenticated, "REFRESH_TOKEN_INVALID");
    await expectError(h.client.logout({ refreshToken: "A".repeat(43) }), Code.Unauthenticated, "REFRESH_TOKEN_INVALID");
  });

  test("a password change ends every session, and access tokens issued before it are refused by auth and by another service", async () => {
    const s = await signedIn();
    const secondDevice = await h.client.login({ identifier: s.email, password: s.password }, as({ ip: freshIp() }));
    // Both tokens work everywhere before the change.
    await h.client.getMe({}, as({ token: s.accessToken }));
    await peer.client.listMyVouchers({}, as({ token: secondDevice.accessToken }));

    const changed = await h.client.changePassword({ currentPassword: s.password, newPassword: "a brand new passphrase" }, as({ ip: freshIp(), token: s.accessToken }));

    const handledBefore = peer.handled();
    for (const old of [s.accessToken, secondDevice.accessToken]) {
      await expectError(h.client.getMe({}, as({ token: old })), Code.Unauthenticated, "TOKEN_REVOKED");
      await expectError(peer.client.listMyVouchers({}, as({ token: old })), Code.Unauthenticated, "TOKEN_REVOKED");
    }
    assert.equal(peer.handled(), handledBefore, "refused before the handler ran");
    // A retry of the change (its response lost) is refused the same way, as the contract says.
    await expectError(
      h.client.changePassword({ currentPassword: s.password, newPassword: "a brand new passphrase" }, as({ ip: freshIp(), token: s.accessToken })),
      Code.Unauthenticated,
      "TOKEN_REVOKED",
    );
    for (const oldRefresh of [s.refreshToken, secondDevice.refreshToken]) {
      await expectError(refresh(oldRefresh), Code.Unauthenticated, "REFRESH_TOKEN_INVALID");
    }
    // The session returned by the change, issued in the same second, works everywhere.
    assert.equal((await h.client.getMe({}, as({ token: changed.accessToken }))).user?.id, s.id);
    await peer.client.listMyVouchers({}, as({ token: changed.accessToken }));
    await refresh(changed.refreshToken);
    // Old password out, new one in.
    await expectError(h.client.login({ identifier: s.username, password: s.password }, as({ ip: freshIp() })), Code.Unauthenticated, "INVALID_CREDENTIALS");
    const relogin = await h.client.login({ identifier: s.username, password: "a brand new passphrase" }, as({ ip: freshIp() }));
    await peer.client.listMyVouchers({}, as({ token: relogin.accessToken }));
  });

  test("the revocation survives the loss of Redis: auth writes the cutoff back from Postgres", async () => {
    const s = await signedIn();
    await h.client.changePassword({ currentPassword: s.password, newPassword: "another fresh passphrase" }, as({ ip: freshIp(), token: s.accessToken }));
    await expectError(peer.client.listMyVouchers({}, as({ token: s.accessToken })), Code.Unauthenticated, "TOKEN_REVOKED");
    await h.auth.platform.redis.del(`revoked-before:${s.id}`); // what a Redis restart without persistence does
    await resyncRevocations(h.auth.platform.db, h.auth.platform.redis); // runs every 30 s in each replica
    await expectError(peer.client.listMyVouchers({}, as({ token: s.accessToken })), Code.Unauthenticated, "TOKEN_REVOKED");
  });

  test("ChangePassword refuses a wrong current password, a weak new one, or the same one, changing nothing", async () => {
    const s = await signedIn();
    const token = as({ ip: freshIp(), token: s.accessToken });
    await expectError(h.client.changePassword({ currentPassword: "wrong one!", newPassword: "a brand new passphrase" }, token), Code.InvalidArgument, "CURRENT_PASSWORD_INCORRECT");
    await expectError(h.client.changePassword({ currentPassword: s.password, newPassword: "password1" }, token), Code.InvalidArgument, "INVALID_ARGUMENT");
    await expectError(h.client.changePassword({ currentPassword: s.password, newPassword: s.password }, token), Code.InvalidArgument, "INVALID_ARGUMENT");
    await expectError(h.client.changePassword({ currentPassword: s.password, newPassword: "x" }, as({})), Code.Unauthenticated, "TOKEN_MISSING");
    await h.client.getMe({}, as({ token: s.accessToken }));
    await refresh(s.refreshToken);
  });
});
