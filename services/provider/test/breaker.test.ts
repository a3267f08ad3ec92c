// The circuit breaker in front of provider-sim (a real process): a provider answering
// 500s or stalling opens it; while open, calls fail fast without reaching the provider
// (one probe per reset period), requests wait instead of failing, an rpc that needs the
// provider now answers UNAVAILABLE with RetryInfo, and the breaker closes on recovery.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { DeliveryChannel } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import type { Behaviour } from "../../provider-sim/behaviour.js";
import { bearer, expectError, metricValue, newPhone, retryDelayMs, startProviderHarness, waitFor, type ProviderHarness } from "./harness.js";

const RESET_MS = 1_000;
const HEALTHY: Partial<Behaviour> = { latency: [{ weight: 1, minMs: 20, maxMs: 60 }] };

let h: ProviderHarness;
before(async () => {
  h = await startProviderHarness("breaker", {
    sim: { default: HEALTHY },
    tune: (s) => {
      s.breaker = { timeoutMs: 1_000, errorThresholdPercentage: 50, volumeThreshold: 3, resetTimeoutMs: RESET_MS, rollingWindowMs: 3_000 };
      s.maxAttempts = 50; // the breaker, not the attempt limit, is under test here
      s.retryBackoffMs = [100, 200, 300];
    },
  });
});
after(() => h?.close());

const breakerIs = async (state: "open" | "closed" | "half_open") => metricValue(await h.metrics(), "vouch_provider_breaker_state", { state }) === 1;

async function requestCodes(count: number, label: string) {
  const token = await h.tokens.customer(`user-${label}`);
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const { codeRequest } = await h.client.requestCode({ phoneNumber: newPhone(), channel: DeliveryChannel.WEB, requestId: `${label}-${i}` }, bearer(token));
      return codeRequest!.id;
    }),
  );
}

test("a provider answering 500s opens the breaker: requests wait, one probe per reset period reaches it, and all complete once it recovers", async () => {
  // A FAILED request to retry later (a `plain` acknowledgement is refused; refusals do not trip the breaker).
  const plainPhone = newPhone();
  await h.sim.configure({ default: HEALTHY, byPhoneNumber: { [plainPhone]: { inlineWindowMs: 50, latency: [{ weight: 1, minMs: 5_000, maxMs: 5_000 }], challengeMethod: "plain", noCallbackRate: 1 } } });
  const admin = await h.tokens.admin();
  const { codeRequest: refused } = await h.client.requestCode({ phoneNumber: plainPhone, channel: DeliveryChannel.WEB, requestId: "refused" }, bearer(await h.tokens.customer("user-refused")));
  await h.waitForState(refused!.id, ["failed"]);
  assert.ok(await breakerIs("closed"));

  await h.sim.configure({ default: { ...HEALTHY, errorRate: 1 } });
  const outageStart = Date.now();
  const ids = await requestCodes(6, "outage");
  await waitFor("the breaker to open", () => breakerIs("open"), 10_000, 20);
  const openSeenAt = Date.now();

  // While open: the rpc that needs the provider now fails fast with RetryInfo…
  const t0 = performance.now();
  const err = await expectError(h.client.retryCodeRequest({ codeRequestId: refused!.id, requestId: "retry-while-open" }, bearer(admin)), Code.Unavailable, "PROVIDER_UNAVAILABLE");
  assert.ok(performance.now() - t0 < 500, "fails fast");
  const delay = retryDelayMs(err);
  assert.ok(delay !== undefined && delay > 0 && delay <= RESET_MS, `RetryInfo says when the next probe is due: ${delay}`);

  // …and the requests wait: still pending, redelivered and short-circuited, not failed.
  await new Promise((r) => setTimeout(r, 3 * RESET_MS + 200));
  for (const id of ids) assert.equal((await h.row(id)).state, "pending");
  const metrics = await h.metrics();
  assert.ok((metricValue(metrics, "vouch_provider_calls_total", { outcome: "short_circuited" }) ?? 0) > 6, "calls failed fast without reaching the provider");

  // The provider saw the first burst, then one probe per reset period, never two at once.
  // The burst is what reached it before the breaker was seen open (on a loaded machine the
  // burst's calls can arrive spread over hundreds of ms); nothing but a probe can reach it
  // after, and the first probe is due a reset period after the opening (which came after
  // the burst's first call).
  const calls = (await h.sim.calls()).filter((c) => Date.parse(c.at) >= outageStart).map((c) => Date.parse(c.at)).sort((a, b) => a - b);
  const burst = calls.filter((t) => t <= openSeenAt);
  const probes = calls.filter((t) => t > openSeenAt);
  // Three calls in the window with half of them failed open it: the refused request's call and two failures.
  assert.ok(burst.length >= 2, `the burst reached the provider before the breaker opened: ${burst.length} calls`);
  assert.ok(probes.length >= 2 && probes.length <= 4, `probes during ${3 * RESET_MS} ms open: ${probes.length}`);
  for (let i = 1; i < probes.length; i++) assert.ok(probes[i] - probes[i - 1] >= RESET_MS - 100, `probes ${probes[i] - probes[i - 1]} ms apart`);
  assert.ok(probes[0] - burst[0] >= RESET_MS - 100, `the first probe waits a reset period: ${probes[0] - burst[0]} ms after the outage's first call`);

  // Recovery: the next probe succeeds, the breaker closes, every waiting request completes.
  await h.sim.configure({ default: HEALTHY });
  await waitFor("the breaker to close", () => breakerIs("closed"), 5_000, 20);
  for (const id of ids) {
    const done = await h.waitForState(id, ["delivered"]);
    assert.ok(done.code);
  }
  const events = (await h.codeReceivedEvents()).filter((e) => ids.includes(e.codeRequestId));
  assert.equal(events.length, ids.length);
  const after = await h.metrics();
  for (const state of ["open", "half_open", "closed"]) {
    assert.ok((metricValue(after, "vouch_provider_breaker_transitions_total", { state }) ?? 0) >= 1, `entered ${state}`);
  }
  // Now the admin retry goes through.
  const { codeRequest: retried } = await h.client.retryCodeRequest({ codeRequestId: refused!.id, requestId: "retry-after-recovery" }, bearer(admin));
  assert.equal(retried!.retryOfCodeRequestId, refused!.id);
});

test("a stalling provider times out, opens the breaker, and is called again once it answers", async () => {
  await h.sim.configure({ default: HEALTHY }); // whatever the test before left behind
  await waitFor("a quiet window", () => breakerIs("closed"), 5_000);
  await h.sim.configure({ default: { ...HEALTHY, stallRate: 1 } });
  const ids = await requestCodes(4, "stall");
  await waitFor("the breaker to open on timeouts", () => breakerIs("open"), 10_000, 20);
  const openedAt = Date.now();
  const metrics = await h.metrics();
  assert.ok((metricValue(metrics, "vouch_provider_calls_total", { outcome: "timeout" }) ?? 0) >= 3, "the stalls counted as timeouts");
  const shortCircuitedBefore = metricValue(metrics, "vouch_provider_calls_total", { outcome: "short_circuited" }) ?? 0;

  // While open the redelivered requests fail fast, and only a probe per reset period (each
  // stalling in turn until its 1 s timeout) reaches the provider.
  await new Promise((r) => setTimeout(r, 3 * RESET_MS + 200));
  const shortCircuited = metricValue(await h.metrics(), "vouch_provider_calls_total", { outcome: "short_circuited" }) ?? 0;
  assert.ok(shortCircuited > shortCircuitedBefore, `calls failed fast while open: ${shortCircuitedBefore} → ${shortCircuited}`);
  const probes = (await h.sim.calls()).map((c) => Date.parse(c.at)).filter((t) => t > openedAt);
  assert.ok(probes.length >= 1 && probes.length <= 3, `probes during ${3 * RESET_MS} ms open: ${probes.length}`);
  for (let i = 1; i < probes.length; i++) assert.ok(probes[i] - probes[i - 1] >= RESET_MS - 100, `probes ${probes[i] - probes[i - 1]} ms apart`);
  for (const id of ids) {
    const row = await h.row(id);
    assert.equal(row.state, "pending");
    assert.match(row.lastError ?? "", /did not answer within 1000 ms/);
  }
  await h.sim.configure({ default: HEALTHY });
  for (const id of ids) await h.waitForState(id, ["delivered"]);
  assert.ok(await breakerIs("closed"));
});
