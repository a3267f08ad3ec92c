// Fuzzing (issue 9): every rpc of every service, enumerated from the generated service
// descriptors, is fed random and boundary messages (fast-check) as an anonymous caller, a
// customer, an admin and a service; then raw bodies (random bytes, unknown fields, truncated
// and oversized messages, JSON of the wrong shape). A poison event on each durable consumer
// must land in the dead letters while the consumer goes on.
//
// Accepted answers, and why:
//   OK                   random input can be valid (a list with page_size 0, a real id);
//   INVALID_ARGUMENT     malformed input, with field violations;
//   RESOURCE_EXHAUSTED   rate limits, and bodies over the 4 MiB read limit;
//   UNAUTHENTICATED,     the access policy of the contract (no token, a customer calling an
//   PERMISSION_DENIED    admin rpc, a person calling a service rpc);
//   NOT_FOUND            a random or someone else's id;
//   FAILED_PRECONDITION  a business rule (activate an archived book, redeem a used code);
//   ALREADY_EXISTS       a request_id reused with another request, a taken username.
// Never UNKNOWN or INTERNAL (an unhandled error), UNIMPLEMENTED (a forgotten rpc), a call
// that hangs, or a refused call that committed a write.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { create, toBinary, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type CallOptions } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import fc from "fast-check";
import { AuthService } from "../gen/vouch/auth/v1/auth_pb.js";
import { CampaignType, PromotionService } from "../gen/vouch/promotion/v1/promotion_pb.js";
import { ProviderService } from "../gen/vouch/provider/v1/provider_pb.js";
import { DeliveryChannel } from "../gen/vouch/type/v1/provider_code_pb.js";
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { connectNats } from "../services/kit/events/index.js";
import { createLogger } from "../services/kit/log.js";
import { describeValue, messageArb, type Hints } from "./harness/arbitrary.js";
import type { ServiceKind } from "./harness/cluster.js";
import { check, failedChecks, report, type Check } from "./harness/history.js";
import { everyOutboxEventPublished, rows } from "./harness/invariants.js";
import { newPhone, startPlatform, type Platform } from "./harness/platform.js";
import { seconds, waitFor } from "./harness/util.js";

const SOAK = process.env.VOUCH_SOAK === "1";
const RUNS = Number(process.env.FUZZ_RUNS ?? (SOAK ? 400 : 20));
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CALL_TIMEOUT_MS = 10_000;

const ACCEPTED = new Set([
  Code.InvalidArgument,
  Code.ResourceExhausted,
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.NotFound,
  Code.FailedPrecondition,
  Code.AlreadyExists,
]);

const SERVICES: [DescService, ServiceKind][] = [
  [AuthService, "auth"],
  [VoucherService, "voucher"],
  [ProviderService, "provider"],
  [PromotionService, "promotion"],
];

let p: Platform;
let hints: Hints;
let identities: { name: string; headers: Record<string, string> }[];
const started = Date.now();

/** The next transaction id Postgres will hand out: only writing transactions take one. */
async function nextXid(): Promise<bigint> {
  const r = await rows<{ x: string }>(p.sql, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS x");
  return BigInt(r[0].x);
}

/** Transactions between two watermarks that committed (rolled-back work leaves nothing behind). */
async function committedBetween(from: bigint, to: bigint): Promise<number> {
  if (to <= from) return 0;
  const r = await rows<{ n: string }>(p.sql, "SELECT count(*) AS n FROM generate_series($1::bigint, $2::bigint - 1) x WHERE pg_xact_status(x::text::xid8) = 'committed'", [from.toString(), to.toString()]);
  return Number(r[0].n);
}

/** Waits until nothing has written for a moment (background work of earlier calls settled). */
async function quiet(): Promise<void> {
  let last = await nextXid();
  await waitFor("the database to go quiet", async () => {
    await new Promise((r) => setTimeout(r, 300));
    const now = await nextXid();
    const still = now === last;
    last = now;
    return still;
  }, 30_000, 0).catch(() => {});
}

type Answer = { code: Code | "ok"; message?: string };

async function invoke(kind: ServiceKind, service: DescService, method: DescMethod, message: unknown, headers: Record<string, string>): Promise<Answer> {
  // A connection of its own per call: an answer that breaks the HTTP/2 session (a header
  // block too large) must be blamed on the call that caused it, not on the next ones.
  const transport = createGrpcTransport({ baseUrl: p.cluster.replicas[kind][0].url });
  const client = createClient(service, transport) as unknown as Record<string, (m: unknown, o: CallOptions) => unknown>;
  const call = client[method.localName];
  try {
    if (method.methodKind === "server_streaming") {
      // A stream that sends nothing and does not end within the deadline counts as hung; a
      // live one (a watch of a real resource) is cut after its first messages.
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(new ConnectError("stream sent nothing", Code.DeadlineExceeded)), CALL_TIMEOUT_MS);
      try {
        let n = 0;
        for await (const _ of call(message, { headers, signal: abort.signal }) as AsyncIterable<unknown>) {
          if (++n >= 2) break;
        }
      } finally {
        clearTimeout(timer);
      }
    } else {
      await call(message, { headers, timeoutMs: CALL_TIMEOUT_MS });
    }
    return { code: "ok" };
  } catch (err) {
    const e = ConnectError.from(err);
    return { code: e.code, message: e.rawMessage };
  }
}

interface Finding {
  rpc: string;
  who: string;
  what: string;
  input: string;
}

describe("reliability: fuzzing every rpc and every consumer", { timeout: 15 * 60_000 }, () => {
  before(async () => {
    p = await startPlatform({
      replicas: { auth: 1, voucher: 1, provider: 1, promotion: 1 },
      sim: { default: { latency: [{ weight: 1, minMs: 5, maxMs: 50 }] } },
      // Fuzzed Register and Login calls would otherwise use up this file's own registrations.
      env: { PROVIDER_REQUESTS_PER_USER_PER_MINUTE: "0", PROVIDER_REQUESTS_PER_PHONE_PER_MINUTE: "0", AUTH_REGISTER_IP_BURST: "100000", AUTH_LOGIN_IP_BURST: "100000" },
    });
    const admin = await p.admin();
    const customer = await p.register("relfuzz");
    const { accessToken } = await p.login(customer);
    const service = await p.auth(0).issueServiceToken({ clientId: "promotion", clientSecret: "dev-promotion-client-secret" });
    identities = [
      { name: "anonymous", headers: {} },
      { name: "customer", headers: { authorization: `Bearer ${accessToken}` } },
      { name: "admin", headers: admin.headers },
      { name: "service", headers: { authorization: `Bearer ${service.accessToken}` } },
      { name: "forged", headers: { authorization: `Bearer ${accessToken.slice(0, -4)}AAAA` } },
    ];
    // Real things to aim at, so fuzzed calls get past "not found" into the code behind it.
    const { bookId } = await p.createActiveBook({ codes: 20, prefix: "FZ" });
    const assigned = await p.voucher(0).assignVoucher({ bookId, userId: customer.id, requestId: randomUUID() }, admin);
    const requested = await p.cluster.client(ProviderService, p.cluster.replicas.provider[0]).requestCode(
      { phoneNumber: customer.phoneNumber, channel: DeliveryChannel.WEB, requestId: randomUUID() },
      { headers: { authorization: `Bearer ${accessToken}` } },
    );
    hints = {
      known: [bookId, assigned.voucher!.id, assigned.voucher!.code, customer.id, customer.username, customer.phoneNumber, requested.codeRequest!.id, "admin", "promotion"],
    };
    console.log(`reliability: fuzz platform up in ${seconds(Date.now() - started)}; seed ${SEED} (FUZZ_SEED=${SEED} replays it), ${RUNS} messages per rpc`);
  });

  after(async () => {
    await p?.dispose();
    console.log(`reliability: fuzz file took ${seconds(Date.now() - started)}`);
  });

  test("every rpc answers random and boundary messages with an accepted code, never hangs, and refuses without writing", async () => {
    const findings: Finding[] = [];
    const codes = new Map<string, number>();
    let calls = 0;
    let refused = 0;
    let rpcs = 0;
    let suspectedWrites = 0;
    // The write detector sees a write when there is one (a successful assignment).
    const probe0 = await nextXid();
    await p.voucher(0).assignVoucher({ bookId: hints.known[0], userId: `calibration-${randomUUID()}`, requestId: randomUUID() }, await p.admin());
    const calibrated = await committedBetween(probe0, await nextXid());
    assert.ok(calibrated >= 1, "the write detector must see a committed assignment");
    for (const [service, kind] of SERVICES) {
      for (const method of service.methods) {
        rpcs++;
        const samples = fc.sample(fc.tuple(messageArb(method.input, hints), fc.constantFrom(...identities)), { numRuns: RUNS, seed: SEED + rpcs });
        for (const [message, who] of samples) {
          const before = await nextXid();
          const answer = await invoke(kind, service, method, message, who.headers);
          const after = await nextXid();
          calls++;
          const name = answer.code === "ok" ? "OK" : Code[answer.code];
          codes.set(name, (codes.get(name) ?? 0) + 1);
          const rpc = `${service.name}.${method.name}`;
          if (answer.code !== "ok" && !ACCEPTED.has(answer.code)) {
            findings.push({ rpc, who: who.name, what: `${name}: ${answer.message}`, input: describeValue(message) });
            continue;
          }
          if (answer.code === "ok") continue;
          refused++;
          if ((await committedBetween(before, after)) === 0) continue;
          // Something committed meanwhile: background work, or this call? Ask again once
          // the database is quiet.
          suspectedWrites++;
          await quiet();
          const again0 = await nextXid();
          const again = await invoke(kind, service, method, message, who.headers);
          const again1 = await nextXid();
          if (again.code !== "ok" && (await committedBetween(again0, again1)) > 0) {
            findings.push({ rpc, who: who.name, what: `refused with ${Code[again.code]} but committed a write`, input: describeValue(message) });
          }
        }
      }
    }
    const checks: Check[] = [
      check("only accepted codes, no hung call, no write by a refused call", findings.length === 0,
        `${findings.length} findings${findings.length ? `:\n      ${findings.slice(0, 15).map((f) => `${f.rpc} as ${f.who}: ${f.what} ← ${f.input}`).join("\n      ")}` : ""}`),
    ];
    report("fuzzing every rpc with typed messages", [
      `${rpcs} rpcs of 4 services, ${RUNS} messages each (seed ${SEED}) as anonymous, customer, admin, service and forged-token callers: ${calls} calls, ${refused} refused`,
      `answers: ${[...codes].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(", ")}`,
      `${suspectedWrites} refused calls overlapped a background write and were replayed on a quiet database`,
    ], undefined, checks);
    assert.equal(failedChecks(checks), "");
    assert.deepEqual(p.cluster.unexpectedExits(), [], "no service may crash");
  });

  test("raw bodies: random bytes, unknown fields, truncated, oversized and wrong-shaped JSON", async () => {
    const admin = await p.admin();
    const findings: Finding[] = [];
    // gRPC's status code table puts "error parsing request proto" at INTERNAL, and connect-es
    // follows it for undecodable binary bodies: the library's answer, not a crash of ours.
    const undecodable: string[] = [];
    const codes = new Map<string, number>();
    let calls = 0;
    let rpcs = 0;
    const unknownFields = new Uint8Array([0xf8, 0x7f, 0x2a, 0xfa, 0x7f, 0x03, 0x61, 0x62, 0x63]); // field 2047 varint 42, field 2047 bytes "abc"
    for (const [service, kind] of SERVICES) {
      for (const method of service.methods) {
        if (method.methodKind !== "unary") continue;
        rpcs++;
        const url = `${p.cluster.replicas[kind][0].url}/${service.typeName}/${method.name}`;
        const typed = fc.sample(messageArb(method.input, hints), { numRuns: 3, seed: SEED + rpcs }).map((m) => create(method.input, m as never));
        const bodies: { what: string; type: string; body: Uint8Array | string; expect?: Code }[] = [
          ...fc.sample(fc.uint8Array({ minLength: 1, maxLength: 256 }), { numRuns: 3, seed: SEED - rpcs }).map((b) => ({ what: "random bytes", type: "application/proto", body: b })),
          ...typed.map((m) => ({ what: `unknown fields after ${describeValue(m, 200)}`, type: "application/proto", body: concat(toBinary(method.input, m), unknownFields) })),
          ...typed.map((m) => {
            const bin = toBinary(method.input, m);
            return { what: `first half of ${describeValue(m, 200)}`, type: "application/proto", body: bin.subarray(0, Math.max(0, Math.floor(bin.length / 2))) };
          }),
          ...fc.sample(fc.json({ maxDepth: 2 }), { numRuns: 3, seed: SEED + 7 * rpcs }).map((j) => ({ what: "random JSON", type: "application/json", body: j })),
          { what: "JSON of the wrong types", type: "application/json", body: JSON.stringify(Object.fromEntries(method.input.fields.map((f) => [f.jsonName, f.fieldKind === "scalar" && f.scalar === 9 ? 12 : "zzz"]))) },
          { what: "oversized (5 MiB)", type: "application/proto", body: oversized(), expect: Code.ResourceExhausted },
        ];
        for (const b of bodies) {
          calls++;
          const answer = await postConnect(url, b.type, b.body, admin.headers);
          const name = answer.code === "ok" ? "OK" : Code[answer.code];
          codes.set(name, (codes.get(name) ?? 0) + 1);
          const bad = answer.code !== "ok" && !ACCEPTED.has(answer.code);
          const wrong = b.expect !== undefined && answer.code !== b.expect;
          if (bad && !wrong && answer.code === Code.Internal && answer.message?.startsWith("parse binary:")) {
            undecodable.push(`${method.name} (${b.what})`);
          } else if (bad || wrong) {
            findings.push({ rpc: `${service.name}.${method.name}`, who: "admin", what: `${b.what} → ${name}${wrong ? ` (expected ${Code[b.expect!]})` : ""}: ${answer.message ?? ""}`, input: typeof b.body === "string" ? b.body.slice(0, 120) : `bytes[${b.body.length}]` });
          }
        }
      }
    }
    const checks = [check("raw bodies only get accepted codes", findings.length === 0,
      `${findings.length} findings${findings.length ? `:\n      ${findings.slice(0, 15).map((f) => `${f.rpc}: ${f.what} ← ${f.input}`).join("\n      ")}` : ""}`)];
    report("fuzzing every unary rpc with raw Connect bodies", [
      `${rpcs} unary rpcs × ${calls / Math.max(1, rpcs)} bodies (random bytes, unknown fields, truncated, random JSON, wrong JSON types, 5 MiB): ${calls} calls`,
      `answers: ${[...codes].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(", ")}`,
      ...(undecodable.length ? [`${undecodable.length} undecodable binary bodies answered INTERNAL "parse binary: …" by the protocol library, as gRPC specifies for a request proto that cannot be parsed (none reached a handler) — e.g. ${undecodable.slice(0, 3).join("; ")}`] : []),
    ], undefined, checks);
    assert.equal(failedChecks(checks), "");
    assert.deepEqual(p.cluster.unexpectedExits(), [], "no service may crash");
  });

  test("a poison event on each consumer lands in the dead letters and the consumer goes on", async () => {
    const log = createLogger("reliability", "silent");
    const nc = await connectNats(p.nats.url, log, { name: "reliability-poison" });
    const checks: Check[] = [];
    try {
      const jsm = await nc.jetstreamManager();
      const js = nc.jetstream();
      const consumers = await jsm.consumers.list("VOUCH").next();
      assert.ok(consumers.length >= 5, `expected the platform's durable consumers, found ${consumers.map((c) => c.name).join(", ")}`);
      // One poison per subject: consumers sharing a subject (code_received has two) each park it.
      const poisonOf = new Map<string, string>();
      for (const subject of new Set(consumers.map((c) => c.config.filter_subject!))) {
        const eventId = `poison-${subject}-${randomUUID()}`;
        // 0x0a 0xff…: field 1, length-delimited, with a length varint that never ends.
        await js.publish(subject, new Uint8Array([0x0a, 0xff, 0xff, 0xff]), { msgID: eventId });
        poisonOf.set(subject, eventId);
      }
      for (const c of consumers) {
        const eventId = poisonOf.get(c.config.filter_subject!)!;
        const parked = await waitFor(`${c.name} to park its poison`, async () => {
          const r = await rows(p.sql, `SELECT 1 FROM (${await deadLetterUnion()}) d WHERE event_id = $1 AND consumer = $2`, [eventId, c.name]);
          return r.length === 1;
        }, 60_000, 200).catch(() => false);
        const info = await waitFor(`${c.name} to have nothing outstanding`, async () => {
          const i = await jsm.consumers.info("VOUCH", c.name);
          return i.num_pending === 0 && i.num_ack_pending === 0 ? i : undefined;
        }, 60_000, 200).catch(() => undefined);
        checks.push(check(`${c.name}: poison parked once, nothing stuck behind it`, parked && info !== undefined,
          `${c.config.filter_subject}: ${parked ? "parked" : "not parked"}, ${info ? "0 pending" : "still pending"}`));
      }

      // The same consumers then handle a real flow end to end.
      const admin = await p.admin();
      const promo = p.cluster.client(PromotionService, p.cluster.replicas.promotion[0]);
      const { campaign } = await promo.createCampaign({
        campaign: {
          name: "after the poison", type: CampaignType.FIRST_LOGIN, quota: 5,
          voucherTerms: { discount: { kind: { case: "percentOff", value: { basisPoints: 1000, maxAmount: { minorUnits: 10_000n, currencyCode: "VND" } } } }, validityDays: 30, codePattern: "AP-*{10}" },
        },
        requestId: randomUUID(),
      }, admin);
      await waitFor("the campaign's codes (voucher-generation)", async () => (await p.voucher(0).getBook({ bookId: campaign!.bookId }, admin)).book!.codeCount >= 5n, 60_000, 200);
      await promo.activateCampaign({ campaignId: campaign!.id }, admin);
      const newcomer = await p.register("relafter");
      await p.login(newcomer);
      const granted = await waitFor("a first-login grant with its voucher (promotion-first-login, promotion-voucher-issuer)", async () => {
        const r = await rows(p.sql, "SELECT 1 FROM promotion.grants WHERE campaign_id = $1 AND user_id = $2 AND state = 'issued'", [campaign!.id, newcomer.id]);
        return r.length === 1;
      }, 60_000, 200).catch(() => false);
      const phone = newPhone();
      const { accessToken } = await p.login(newcomer);
      const req = await p.cluster.client(ProviderService, p.cluster.replicas.provider[0]).requestCode(
        { phoneNumber: phone, channel: DeliveryChannel.SMS, requestId: randomUUID() },
        { headers: { authorization: `Bearer ${accessToken}` } },
      );
      const bought = await waitFor("a bought code delivered and stored (provider-worker, provider-delivery, voucher-purchased-codes)", async () => {
        const r = await rows(p.sql, `SELECT 1 FROM provider.code_requests r JOIN voucher.purchased_codes c ON c.code_request_id = r.id WHERE r.id = $1 AND r.state = 'delivered'`, [req.codeRequest!.id]);
        return r.length === 1;
      }, 60_000, 200).catch(() => false);
      checks.push(check("after the poison, a first login gets its voucher", granted, granted ? "grant issued" : "no grant"));
      checks.push(check("after the poison, a bought code is delivered and stored", bought, bought ? "delivered by SMS and stored" : "not delivered"));
      const letters = await rows<{ event_id: string }>(p.sql, await deadLetterUnion());
      const expected = new Set(poisonOf.values());
      const stray = letters.filter((l) => !expected.has(l.event_id));
      checks.push(check("every dead letter accounted for", stray.length === 0 && letters.length === consumers.length, `${letters.length} dead letters for ${consumers.length} consumers poisoned on purpose, ${stray.length} others`));
      checks.push(await everyOutboxEventPublished(p.sql));
      report("a poison event on every consumer", [
        `${consumers.length} durable consumers found on the stream (${consumers.map((c) => c.name).join(", ")}); one undecodable event published on each subject they consume`,
        "then a first-login campaign, a first login and an SMS code purchase, end to end",
      ], undefined, checks);
    } finally {
      await nc.close();
    }
    assert.equal(failedChecks(checks), "");
  });
});

async function deadLetterUnion(): Promise<string> {
  const schemas = await rows<{ s: string }>(p.sql, "SELECT table_schema AS s FROM information_schema.tables WHERE table_name = 'dead_letters'");
  return schemas.map((x) => `SELECT consumer, event_id FROM "${x.s}".dead_letters`).join(" UNION ALL ");
}

const bigintJson = (_k: string, v: unknown) => (typeof v === "bigint" ? `${v}n` : v);

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

let big: Uint8Array | undefined;
/** A well-formed message of 5 MiB: one unknown length-delimited field (number 2047). */
function oversized(): Uint8Array {
  if (big) return big;
  const size = 5 * 1024 * 1024;
  const header = [0xfa, 0x7f]; // field 2047, wire type 2
  let n = size;
  while (n >= 0x80) {
    header.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  header.push(n);
  big = new Uint8Array(header.length + size);
  big.set(header);
  return big;
}

const CODE_BY_NAME = new Map<string, Code>(
  Object.entries(Code)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [k.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase(), v as Code]),
);

/** One Connect unary call over HTTP/1.1 with a body as given. */
async function postConnect(url: string, type: string, body: Uint8Array | string, headers: Record<string, string>): Promise<Answer> {
  try {
    const res = await fetch(url, { method: "POST", headers: { "content-type": type, "connect-protocol-version": "1", ...headers }, body: typeof body === "string" ? body : Buffer.from(body), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
    const text = await res.text();
    if (res.status === 200) return { code: "ok" };
    let parsed: { code?: string; message?: string } = {};
    try {
      parsed = JSON.parse(text);
    } catch {
      return { code: Code.Unknown, message: `HTTP ${res.status}, not a Connect error: ${text.slice(0, 200)}` };
    }
    return { code: CODE_BY_NAME.get(parsed.code ?? "") ?? Code.Unknown, message: parsed.message };
  } catch (err) {
    return { code: Code.DeadlineExceeded, message: `no answer: ${String(err)}` };
  }
}
