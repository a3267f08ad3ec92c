// provider-sim as the separate process it is: inline answers within the window, S256
// acknowledgements at the window followed by the callback (SUCCESS or LATE_SUCCESS),
// idempotency by request id, callback retries, failures on demand, config validation.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { newPhone, startSim, waitFor, type SimProcess } from "../../provider/test/harness.js";

interface Posted {
  path: string;
  body: Record<string, unknown>;
  at: number;
}

let sim: SimProcess;
let receiver: http.Server;
let receiverUrl: string;
const posted: Posted[] = [];
/** What the receiver answers, by request id (default 200). */
const answers = new Map<string, number[]>();

before(async () => {
  receiver = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const parsed = JSON.parse(body) as Record<string, unknown>;
      posted.push({ path: req.url ?? "", body: parsed, at: Date.now() });
      const queue = answers.get(String(parsed.requestId)) ?? [];
      const status = queue.shift() ?? 200;
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ status }));
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
  sim = await startSim({ default: { inlineWindowMs: 150, lateAfterMs: 500 } });
});
after(async () => {
  await sim?.stop();
  receiver?.close();
});

async function order(requestId: string, phoneNumber: string) {
  const started = Date.now();
  const res = await fetch(`${sim.url}/api/request/voucher`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ requestId, phoneNumber, callbackUrl: `${receiverUrl}/cb/${requestId}` }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, ms: Date.now() - started };
}

const at = (ms: number) => [{ weight: 1, minMs: ms, maxMs: ms }];
const s256 = (v: string) => createHash("sha256").update(v).digest("base64url");

describe("provider-sim", () => {
  test("answers a code inline within the window, and acknowledges slower ones at the window with an S256 challenge of the verifier it posts later", async () => {
    const [fast, slow, late] = [newPhone(), newPhone(), newPhone()];
    await sim.configure({ default: { inlineWindowMs: 150, lateAfterMs: 500 }, byPhoneNumber: { [fast]: { latency: at(50) }, [slow]: { latency: at(300) }, [late]: { latency: at(700) } } });
    const [a, b, c] = await Promise.all([order("fast-1", fast), order("slow-1", slow), order("late-1", late)]);
    assert.equal(a.status, 200);
    assert.equal(a.body.status, "SUCCESS");
    assert.match(String(a.body.voucherCode), /^VPS-[2-9A-Z]{5}-[2-9A-Z]{5}$/);
    // 200 + SUCCESS is the inline answer (a slower code is acknowledged with 202): how late it
    // arrives past its 50 ms is the machine's load, not the sim's behaviour.
    assert.ok(a.ms >= 40, `inline after ${a.ms} ms`);
    for (const ack of [b, c]) {
      assert.equal(ack.status, 202);
      assert.deepEqual([ack.body.status, ack.body.codeChallengeMethod, ack.body.message], ["PROCESSING", "S256", "Your request is being processed within 30 seconds"]);
      assert.ok(ack.ms >= 140, `acknowledged at the window (${ack.ms} ms)`);
    }
    const cbSlow = await waitFor("the slow callback", async () => posted.find((p) => p.body.requestId === "slow-1"));
    const cbLate = await waitFor("the late callback", async () => posted.find((p) => p.body.requestId === "late-1"));
    assert.equal(cbSlow.path, "/cb/slow-1");
    assert.equal(s256(String(cbSlow.body.codeVerifier)), b.body.codeChallenge, "the verifier hashes to the acknowledged challenge");
    assert.equal(cbSlow.body.status, "SUCCESS");
    assert.equal(cbSlow.body.message, "Thank you for using our services, your voucher code is ready.");
    assert.equal(cbLate.body.status, "LATE_SUCCESS");
    assert.equal(cbLate.body.message, "Thank you for your patience, your voucher code is ready.");
    assert.equal(s256(String(cbLate.body.codeVerifier)), c.body.codeChallenge);
    assert.equal(String(cbSlow.body.codeVerifier).length, 43);
  });

  test("is idempotent by request id: a repeated call gets the same answer and schedules nothing new", async () => {
    const phone = newPhone();
    await sim.configure({ default: { inlineWindowMs: 100, lateAfterMs: 500 }, byPhoneNumber: { [phone]: { latency: at(250) } } });
    const first = await order("idem-1", phone);
    const second = await order("idem-1", phone);
    assert.equal(second.status, 202);
    assert.equal(second.body.codeChallenge, first.body.codeChallenge);
    assert.ok(second.ms < 80, "the window already passed for this request");
    await waitFor("the callback", async () => posted.some((p) => p.body.requestId === "idem-1"));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(posted.filter((p) => p.body.requestId === "idem-1").length, 1, "one callback");
    assert.equal((await sim.request("idem-1"))?.calls, 2);
  });

  test("retries a callback the receiver answers with 5xx, and takes a 4xx as final", async () => {
    const phone = newPhone();
    await sim.configure({ default: { inlineWindowMs: 50, lateAfterMs: 5_000 }, byPhoneNumber: { [phone]: { latency: at(100) } } });
    answers.set("retry-1", [503, 503]);
    answers.set("refused-1", [409]);
    await Promise.all([order("retry-1", phone), order("refused-1", phone)]);
    const retried = await waitFor("three answered attempts", async () => {
      const r = await sim.request("retry-1");
      // An attempt is listed while it is in flight, before its answer is: wait for the third's.
      return r && r.callbacks.length === 3 && r.callbacks[2].httpStatus !== undefined ? r : undefined;
    });
    assert.deepEqual(retried.callbacks.map((c) => c.httpStatus), [503, 503, 200]);
    await new Promise((r) => setTimeout(r, 600));
    assert.deepEqual((await sim.request("refused-1"))?.callbacks.map((c) => c.httpStatus), [409]);
  });

  test("fails on demand: errors answer 500 and stalls never answer", async () => {
    const [failing, stalling] = [newPhone(), newPhone()];
    await sim.configure({ byPhoneNumber: { [failing]: { errorRate: 1 }, [stalling]: { stallRate: 1 } } });
    const failed = await order("err-1", failing);
    assert.equal(failed.status, 500);
    const stalled = await fetch(`${sim.url}/api/request/voucher`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ requestId: "stall-1", phoneNumber: stalling, callbackUrl: `${receiverUrl}/cb` }),
      signal: AbortSignal.timeout(300),
    }).then(() => "answered", (err: Error) => err.name);
    assert.equal(stalled, "TimeoutError");
    const calls = await sim.calls();
    assert.deepEqual(calls.filter((c) => c.requestId === "err-1" || c.requestId === "stall-1").map((c) => c.answer), ["error", "stalled"]);
  });

  test("refuses an invalid configuration and keeps the one it had", async () => {
    const before = await (await fetch(`${sim.url}/sim/config`)).json();
    for (const bad of [{ default: { errorRate: 2 } }, { default: { latency: [] } }, { default: { challengeMethod: "S512" } }, { nonsense: true }, { default: { typo: 1 } }]) {
      const res = await fetch(`${sim.url}/sim/config`, { method: "PUT", body: JSON.stringify(bad) });
      assert.equal(res.status, 400, JSON.stringify(bad));
    }
    assert.deepEqual(await (await fetch(`${sim.url}/sim/config`)).json(), before);
  });
});
