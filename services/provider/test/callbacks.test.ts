// The PKCE-secured callback endpoint, against provider-sim as a real process: the RFC 7636
// appendix B vector end to end, and every callback that must be refused — wrong verifier,
// `plain`, 42 and 129 characters, a bad character, a replay with other content, a verifier
// posted to another request, an unknown request — each leaving no code and no event.
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { DeliveryChannel } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import type { Behaviour } from "../../provider-sim/behaviour.js";
import { s256Challenge } from "../domain/pkce.js";
import { bearer, newPhone, startProviderHarness, waitFor, type ProviderHarness } from "./harness.js";

const RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/** Acknowledged after 100 ms; the callback only when a test asks the sim for it. */
const ACK_AND_WAIT: Partial<Behaviour> = { inlineWindowMs: 100, latency: [{ weight: 1, minMs: 60_000, maxMs: 60_000 }], noCallbackRate: 1 };

let h: ProviderHarness;
let token: string;

before(async () => {
  h = await startProviderHarness("callbacks", { sim: { default: ACK_AND_WAIT } });
  token = await h.tokens.customer("user-callbacks");
});
after(() => h?.close());

/** A request acknowledged by the sim with `behaviour`; returns its id and the sim's record. */
async function acknowledgedRequest(behaviour: Partial<Behaviour> = {}) {
  const phone = newPhone();
  await h.sim.configure({ default: ACK_AND_WAIT, byPhoneNumber: { [phone]: { ...ACK_AND_WAIT, ...behaviour } } });
  const { codeRequest } = await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.WEB, requestId: randomUUID() }, bearer(token));
  const id = codeRequest!.id;
  await h.waitForState(id, ["acknowledged", "failed"]);
  const sim = await h.sim.request(id);
  assert.ok(sim, "the sim knows the request");
  return { id, sim };
}

async function assertUntouched(id: string) {
  const row = await h.row(id);
  assert.equal(row.state, "acknowledged");
  assert.equal(row.code, null, "no code stored");
  assert.equal((await h.codeReceivedEvents()).filter((e) => e.codeRequestId === id).length, 0, "no code_received event");
}

const valid = (sim: { codeVerifier: string; voucherCode: string }, extra: Record<string, unknown> = {}) => ({
  codeVerifier: sim.codeVerifier,
  status: "SUCCESS",
  voucherCode: sim.voucherCode,
  ...extra,
});

describe("provider callbacks", () => {
  test("the RFC 7636 appendix B verifier matches its challenge, and its callback delivers the code", async () => {
    assert.equal(s256Challenge(RFC_VERIFIER), RFC_CHALLENGE);
    const { id } = await acknowledgedRequest({ verifier: RFC_VERIFIER });
    assert.equal((await h.row(id)).codeChallenge, RFC_CHALLENGE, "the acknowledgement's challenge is stored");

    const sim = await h.sim.callBackNow(id);
    assert.deepEqual(sim.callbacks.map((c) => [c.httpStatus, c.codeVerifier]), [[200, RFC_VERIFIER]]);
    assert.deepEqual(sim.callbacks[0].response, { result: "ACCEPTED" });
    const done = await h.waitForState(id, ["delivered"]);
    assert.equal(done.code, sim.voucherCode);
    assert.equal(done.providerStatus, "success");
    const events = (await h.codeReceivedEvents()).filter((e) => e.codeRequestId === id);
    assert.deepEqual(events.map((e) => e.code), [sim.voucherCode]);
  });

  test("a wrong verifier, the plain method, a bad status, another request's id or verifier, garbage and an unknown id are refused and change nothing", async () => {
    const { id, sim } = await acknowledgedRequest();
    const other = await acknowledgedRequest();
    const refusals: [string, string, unknown, number, string][] = [
      ["wrong verifier", id, valid(sim, { codeVerifier: randomBytes(32).toString("base64url") }), 403, "VERIFIER_MISMATCH"],
      ["plain method", id, valid(sim, { codeChallengeMethod: "plain" }), 400, "METHOD_NOT_SUPPORTED"],
      ["unknown status", id, valid(sim, { status: "FAILED" }), 400, "STATUS_INVALID"],
      ["no code", id, valid(sim, { voucherCode: "" }), 400, "CODE_INVALID"],
      ["another request's id in the body", id, valid(sim, { requestId: other.id }), 400, "REQUEST_ID_MISMATCH"],
      ["this verifier on another request", other.id, valid(sim), 403, "VERIFIER_MISMATCH"],
      ["not JSON", id, "{not json", 400, "BAD_REQUEST"],
      ["unknown request id", randomUUID(), valid(sim), 404, "UNKNOWN_REQUEST"],
      ["not a request id", "not-a-request-id", valid(sim), 404, "UNKNOWN_REQUEST"],
    ];
    for (const [what, target, body, status, error] of refusals) {
      const res = await h.postCallback(target, body);
      assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error, error, what);
    }
    await assertUntouched(id);
    await assertUntouched(other.id);
    const metrics = await h.metrics();
    assert.match(metrics, /vouch_provider_callbacks_total\{[^}]*outcome="VERIFIER_MISMATCH"[^}]*\} 2/);
  });

  test("an accepted callback replayed as is is an idempotent OK; replayed with another code or status it is refused", async () => {
    const { id, sim } = await acknowledgedRequest();
    assert.deepEqual(await h.postCallback(id, valid(sim)), { status: 200, body: { result: "ACCEPTED" } });
    assert.deepEqual(await h.postCallback(id, valid(sim)), { status: 200, body: { result: "ALREADY_ACCEPTED" } });
    const otherCode = await h.postCallback(id, valid(sim, { voucherCode: "VPS-FORGED-99" }));
    assert.deepEqual([otherCode.status, otherCode.body.error], [409, "CALLBACK_ALREADY_USED"]);
    const otherStatus = await h.postCallback(id, valid(sim, { status: "LATE_SUCCESS" }));
    assert.deepEqual([otherStatus.status, otherStatus.body.error], [409, "CALLBACK_ALREADY_USED"]);

    const done = await h.waitForState(id, ["delivered"]);
    assert.equal(done.code, sim.voucherCode, "the first code stays");
    assert.equal(done.providerStatus, "success");
    // Replays after delivery are still the same idempotent OK.
    assert.deepEqual(await h.postCallback(id, valid(sim)), { status: 200, body: { result: "ALREADY_ACCEPTED" } });
    assert.equal((await h.codeReceivedEvents()).filter((e) => e.codeRequestId === id).length, 1, "one event for all the replays");
  });

  test("verifiers of 42 and 129 characters, or with a character outside the RFC set, are refused even when they hash to the challenge", async () => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    const verifierOf = (n: number) => Array.from({ length: n }, (_, i) => alphabet[(i * 7) % alphabet.length]).join("");
    const cases: [number | string, string][] = [
      [42, "VERIFIER_LENGTH"],
      [129, "VERIFIER_LENGTH"],
      [`${verifierOf(42)}+`, "VERIFIER_CHARSET"],
    ];
    for (const [spec, error] of cases) {
      const verifier = typeof spec === "number" ? verifierOf(spec) : spec;
      const { id } = await acknowledgedRequest({ verifier });
      assert.equal((await h.row(id)).codeChallenge, s256Challenge(verifier), "the challenge is of this verifier");
      const sim = await h.sim.callBackNow(id); // the sim itself posts it
      assert.equal(sim.callbacks[0].httpStatus, 400, `${verifier.length} characters`);
      assert.equal((sim.callbacks[0].response as { error?: string }).error, error);
      await assertUntouched(id);
    }
    // The bounds themselves are fine.
    for (const n of [43, 128]) {
      const { id } = await acknowledgedRequest({ verifier: verifierOf(n) });
      const sim = await h.sim.callBackNow(id);
      assert.equal(sim.callbacks[0].httpStatus, 200, `${n} characters`);
      await h.waitForState(id, ["delivered"]);
    }
  });

  test("a provider acknowledging with the plain method is refused: the request fails and its callback is refused", async () => {
    const { id, sim } = await acknowledgedRequest({ challengeMethod: "plain" });
    assert.equal(sim.codeChallenge, sim.codeVerifier, "with plain the challenge is the verifier");
    const failed = await h.row(id);
    assert.equal(failed.state, "failed");
    assert.equal(failed.codeChallenge, null, "the plain challenge was not kept");
    assert.match(failed.failureMessage ?? "", /only S256 is accepted/);

    // The sim's own callback names its method; without it, there is still no challenge to match.
    const after = await h.sim.callBackNow(id);
    assert.equal(after.callbacks[0].httpStatus, 400);
    assert.equal((after.callbacks[0].response as { error?: string }).error, "METHOD_NOT_SUPPORTED");
    const unnamed = await h.postCallback(id, valid(sim));
    assert.deepEqual([unnamed.status, unnamed.body.error], [409, "NOT_AWAITING_CALLBACK"]);
    const row = await h.row(id);
    assert.equal(row.state, "failed");
    assert.equal(row.code, null);
    assert.equal((await h.codeReceivedEvents()).filter((e) => e.codeRequestId === id).length, 0);
  });

  test("a callback that overtakes the acknowledgement is asked to come again, then accepted", async () => {
    const phone = newPhone();
    // Acknowledged at 2 s; the test posts the callback before that.
    await h.sim.configure({ default: ACK_AND_WAIT, byPhoneNumber: { [phone]: { ...ACK_AND_WAIT, inlineWindowMs: 2_000 } } });
    const { codeRequest } = await h.client.requestCode({ phoneNumber: phone, channel: DeliveryChannel.WEB, requestId: randomUUID() }, bearer(token));
    const id = codeRequest!.id;
    const sim = await waitFor("the sim to get the call", () => h.sim.request(id));
    const early = await h.postCallback(id, valid(sim));
    assert.deepEqual([early.status, early.body.error], [503, "NOT_YET_ACKNOWLEDGED"]);
    assert.equal((await h.row(id)).state, "pending");

    await h.waitForState(id, ["acknowledged"]);
    assert.deepEqual(await h.postCallback(id, valid(sim)), { status: 200, body: { result: "ACCEPTED" } });
    await h.waitForState(id, ["delivered"]);
  });
});
