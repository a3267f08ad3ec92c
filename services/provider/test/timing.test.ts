// The timing matrix of seed 002, all at once against provider-sim as a real process: a
// code inline at 2.9 s, a callback at 10 s, a callback after the "30 s" mark (LATE_SUCCESS),
// never a callback, an inline code followed by a late callback anyway, a duplicated
// callback, and a callback after the deadline. Each request ends in exactly one final
// state with at most one code and one `code_received` event.
//
// Production timings are 3 s (inline window, and the breaker timeout just above it) and
// 30 s (late). The 3 s ones are real here; the 30 s mark is configured down to 12 s on the
// sim and the request deadline to 18 s, so the file takes ~21 s instead of minutes.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { DeliveryChannel } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import type { Behaviour } from "../../provider-sim/behaviour.js";
import { bearer, newPhone, startProviderHarness, waitFor, type ProviderHarness } from "./harness.js";

const LATE_AFTER_MS = 12_000;
const DEADLINE_MS = 18_000;

let h: ProviderHarness;
before(async () => {
  h = await startProviderHarness("timing", {
    sim: { default: { inlineWindowMs: 3_000, lateAfterMs: LATE_AFTER_MS } },
    tune: (s) => {
      s.requestDeadlineMs = DEADLINE_MS;
    },
  });
});
after(() => h?.close());

interface Scenario {
  name: string;
  behaviour: Partial<Behaviour>;
  final: "delivered" | "expired";
  providerStatus?: "success" | "late_success";
  /** The HTTP statuses the sim's callbacks got, in order. */
  callbacks: number[];
  /** Which code the request ends with: the first one the sim made, or none. */
  inline?: boolean;
}

const at = (ms: number) => [{ weight: 1, minMs: ms, maxMs: ms }];

const SCENARIOS: Scenario[] = [
  { name: "code inline at 2.9 s", behaviour: { latency: at(2_900) }, final: "delivered", providerStatus: "success", callbacks: [], inline: true },
  { name: "callback at 10 s", behaviour: { latency: at(10_000) }, final: "delivered", providerStatus: "success", callbacks: [200] },
  { name: "callback after the late mark", behaviour: { latency: at(14_000) }, final: "delivered", providerStatus: "late_success", callbacks: [200] },
  { name: "never a callback", behaviour: { latency: at(14_000), noCallbackRate: 1 }, final: "expired", callbacks: [] },
  { name: "inline code, then a late callback anyway", behaviour: { latency: at(1_000), callbackAfterInlineRate: 1 }, final: "delivered", providerStatus: "success", callbacks: [409], inline: true },
  { name: "the same callback twice", behaviour: { latency: at(6_000), duplicateCallbackRate: 1 }, final: "delivered", providerStatus: "success", callbacks: [200, 200] },
  { name: "callback after the deadline", behaviour: { latency: at(DEADLINE_MS + 1_500) }, final: "expired", callbacks: [409] },
];

test("each timing of the provider ends in exactly one final state, with at most one code and one event", async () => {
  const phones = SCENARIOS.map(() => newPhone());
  await h.sim.configure({
    default: { inlineWindowMs: 3_000, lateAfterMs: LATE_AFTER_MS },
    byPhoneNumber: Object.fromEntries(SCENARIOS.map((s, i) => [phones[i], s.behaviour])),
  });
  const token = await h.tokens.customer("user-timing");
  const started = Date.now();
  const ids = await Promise.all(
    SCENARIOS.map(async (s, i) => {
      const { codeRequest } = await h.client.requestCode({ phoneNumber: phones[i], channel: DeliveryChannel.WEB, requestId: `timing-${i}` }, bearer(token));
      return codeRequest!.id;
    }),
  );

  // Everything has happened once the last callback (after the deadline) has been answered.
  const lastIndex = SCENARIOS.length - 1;
  await waitFor("the callback after the deadline", async () => (await h.sim.request(ids[lastIndex]))?.callbacks.some((c) => c.httpStatus), 30_000, 200);
  await new Promise((r) => setTimeout(r, 300)); // the duplicate posts 50 ms after the first
  const events = await h.codeReceivedEvents();

  for (const [i, s] of SCENARIOS.entries()) {
    const row = await h.row(ids[i]);
    const sim = (await h.sim.request(ids[i]))!;
    assert.equal(row.state, s.final, `${s.name}: final state`);
    assert.equal(row.providerStatus, s.providerStatus ?? null, `${s.name}: provider status`);
    assert.deepEqual(sim.callbacks.map((c) => c.httpStatus), s.callbacks, `${s.name}: callbacks answered`);
    const mine = events.filter((e) => e.codeRequestId === ids[i]);
    if (s.final === "delivered") {
      assert.equal(row.code, sim.voucherCode, `${s.name}: the provider's first code`);
      assert.equal(mine.length, 1, `${s.name}: one event`);
      assert.equal(mine[0].code, row.code);
      assert.equal(sim.outcome, s.inline ? "inline" : "acknowledged", `${s.name}: how the provider answered`);
    } else {
      assert.equal(row.code, null, `${s.name}: no code`);
      assert.equal(mine.length, 0, `${s.name}: no event`);
    }
    assert.equal(sim.calls, 1, `${s.name}: the provider was called once`);
  }

  const inline = await h.row(ids[0]);
  assert.ok(inline.receivedAt!.getTime() - inline.createdAt.getTime() >= 2_800, "the 2.9 s code came inline, not by callback");
  assert.equal(inline.acknowledgedAt, null);
  const late = await h.row(ids[2]);
  assert.ok(late.receivedAt!.getTime() - late.createdAt.getTime() > LATE_AFTER_MS);
  assert.equal(late.statusMessage, "Thank you for your patience, your voucher code is ready.");
  const expired = await h.row(ids[3]);
  assert.ok(expired.updatedAt.getTime() - expired.createdAt.getTime() >= DEADLINE_MS - 50, "expired at the deadline, not before");
  assert.ok(Date.now() - started < 30_000);
});
