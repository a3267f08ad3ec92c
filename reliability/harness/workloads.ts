// The load the fault scenarios drive through both replicas, recorded as a history, and the
// checks that compare the history with the rows: an `ok` happened exactly once, a `failed`
// did not happen, an `unknown` happened at most once.
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { DeliveryChannel } from "../../gen/vouch/type/v1/provider_code_pb.js";
import { ProviderService } from "../../gen/vouch/provider/v1/provider_pb.js";
import { VoucherService } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import { History, check, runOp, type Check, type Outcome } from "./history.js";
import { one, redemptionsByOrder, rows } from "./invariants.js";
import { newPhone, pick, type Platform } from "./platform.js";
import { inParallel } from "./util.js";

export interface Assignment {
  requestId: string;
  userId: string;
  outcome: Outcome;
  voucherId?: string;
  code?: string;
}

/** AssignVoucher for each user `perUser` times, alternating replicas, retrying uncertain answers. */
export async function assignVouchers(p: Platform, h: History, opts: { bookId: string; users: string[]; perUser: number; concurrency?: number; onProgress?: (done: number) => void }): Promise<Assignment[]> {
  const admin = await p.admin();
  const plan = opts.users.flatMap((userId) => Array.from({ length: opts.perUser }, () => ({ userId, requestId: randomUUID() })));
  let done = 0;
  return inParallel(plan, opts.concurrency ?? 16, async ({ userId, requestId }, i) => {
    const r = await runOp(h, "assign", (attempt, timeoutMs) =>
      p.cluster.client(VoucherService, pick("voucher", i, attempt, p.cluster)).assignVoucher({ bookId: opts.bookId, userId, requestId }, { ...admin, timeoutMs }),
    );
    opts.onProgress?.(++done);
    return { requestId, userId, outcome: r.outcome, voucherId: r.value?.voucher?.id, code: r.value?.voucher?.code };
  });
}

export interface Redeem {
  requestId: string;
  code: string;
  outcome: Outcome;
  redemptionId?: string;
  errorCode?: Code;
}

/**
 * `perCode` competing redeems of every code (each its own request_id and order reference),
 * shuffled, alternating replicas. With `usesPerCode` uses, at most that many may win.
 */
export async function redeemCodes(p: Platform, h: History, opts: { codes: { code: string; userId: string }[]; perCode: number; orderPrefix: string; concurrency?: number; onProgress?: (done: number) => void }): Promise<Redeem[]> {
  const admin = await p.admin();
  const plan = opts.codes.flatMap((c) => Array.from({ length: opts.perCode }, () => ({ ...c, requestId: `${opts.orderPrefix}${randomUUID()}` })));
  for (let i = plan.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [plan[i], plan[j]] = [plan[j], plan[i]];
  }
  let done = 0;
  return inParallel(plan, opts.concurrency ?? 24, async ({ code, userId, requestId }, i) => {
    const r = await runOp(h, "redeem", (attempt, timeoutMs) =>
      p.cluster.client(VoucherService, pick("voucher", i, attempt, p.cluster)).redeemVoucher(
        { code, userId, orderReference: requestId, orderAmount: { minorUnits: 200_000n, currencyCode: "VND" }, requestId },
        { ...admin, timeoutMs },
      ),
    );
    opts.onProgress?.(++done);
    return { requestId, code, outcome: r.outcome, redemptionId: r.value?.redemption?.id, errorCode: r.error?.code };
  });
}

/** Replays some successful redeems with the same request_id: each must answer the first redemption. */
export async function replayRedeems(p: Platform, h: History, done: Redeem[], codes: Map<string, string>, count = 40): Promise<Check> {
  const admin = await p.admin();
  const sample = done.filter((r) => r.outcome === "ok").slice(0, count);
  let same = 0;
  await inParallel(sample, 8, async (r, i) => {
    const res = await runOp(h, "redeem replay", (attempt, timeoutMs) =>
      p.cluster.client(VoucherService, pick("voucher", i + 1, attempt, p.cluster)).redeemVoucher(
        { code: r.code, userId: codes.get(r.code)!, orderReference: r.requestId, orderAmount: { minorUnits: 200_000n, currencyCode: "VND" }, requestId: r.requestId },
        { ...admin, timeoutMs },
      ),
    );
    if (res.value?.redemption?.id === r.redemptionId) same++;
  });
  return check("a retried redeem answers the first redemption", same === sample.length, `${sample.length} replays, ${same} answered the same redemption`);
}

/** The history against the rows: ok → exactly once, failed → never, unknown → at most once; uses per code respected. */
export async function redeemChecks(p: Platform, redeems: Redeem[], orderPrefix: string, usesPerCode: number): Promise<Check[]> {
  const byOrder = await redemptionsByOrder(p.sql, orderPrefix);
  let okOnce = 0, okBad = 0, failedNever = 0, failedBad = 0, unknownHappened = 0, unknownBad = 0;
  for (const r of redeems) {
    const n = byOrder.get(r.requestId) ?? 0;
    if (r.outcome === "ok") n === 1 ? okOnce++ : okBad++;
    else if (r.outcome === "failed") n === 0 ? failedNever++ : failedBad++;
    else if (n <= 1) unknownHappened += n;
    else unknownBad++;
  }
  const winsPerCode = new Map<string, number>();
  for (const r of redeems) if (r.outcome === "ok") winsPerCode.set(r.code, (winsPerCode.get(r.code) ?? 0) + 1);
  const overUsed = [...winsPerCode.values()].filter((n) => n > usesPerCode).length;
  const unknown = redeems.filter((r) => r.outcome === "unknown").length;
  return [
    check("each ok redeem happened exactly once", okBad === 0, `${okOnce} ok redeems found once, ${okBad} not`),
    check("each failed redeem never happened", failedBad === 0, `${failedNever} failed redeems absent, ${failedBad} found`),
    check("each unknown redeem happened at most once", unknownBad === 0, `${unknown} unknown, ${unknownHappened} of them happened, ${unknownBad} twice`),
    check("no code won more redeems than its uses", overUsed === 0, `${winsPerCode.size} codes redeemed, ${overUsed} with more than ${usesPerCode} ok answers`),
  ];
}

/** Assignments against the rows: each ok assign owns exactly one code, no code twice. */
export async function assignChecks(p: Platform, bookId: string, assigned: Assignment[]): Promise<Check[]> {
  const ok = assigned.filter((a) => a.outcome === "ok");
  const distinct = new Set(ok.map((a) => a.voucherId)).size;
  const owned = await one<{ n: string }>(p.sql, "SELECT count(*) AS n FROM voucher.codes WHERE book_id = $1 AND owner_user_id IS NOT NULL", [bookId]);
  const unknown = assigned.filter((a) => a.outcome === "unknown").length;
  const mismatched = await rows(p.sql, "SELECT id FROM voucher.codes WHERE id = ANY($1) AND owner_user_id IS NULL", [ok.map((a) => a.voucherId)]);
  const n = Number(owned.n);
  return [
    check("no code assigned twice", distinct === ok.length, `${ok.length} ok assigns got ${distinct} distinct codes`),
    check("each ok assign holds its code, nothing else was assigned", mismatched.length === 0 && n >= ok.length && n <= ok.length + unknown,
      `${n} codes owned for ${ok.length} ok + ${unknown} unknown assigns, ${mismatched.length} ok codes without an owner`),
  ];
}

export interface CodeRequestOp {
  requestId: string;
  phoneNumber: string;
  outcome: Outcome;
  codeRequestId?: string;
}

/** RequestCode `count` times (one new phone number each), alternating provider replicas. */
export async function requestCodes(p: Platform, h: History, opts: { count: number; token: string; concurrency?: number; phones?: string[]; onProgress?: (done: number) => void; kind?: string }): Promise<CodeRequestOp[]> {
  const headers = { authorization: `Bearer ${opts.token}` };
  const plan = Array.from({ length: opts.count }, (_, i) => ({ requestId: randomUUID(), phoneNumber: opts.phones?.[i] ?? newPhone() }));
  let done = 0;
  return inParallel(plan, opts.concurrency ?? 16, async ({ requestId, phoneNumber }, i) => {
    const r = await runOp(h, opts.kind ?? "request code", (attempt, timeoutMs) =>
      p.cluster.client(ProviderService, pick("provider", i, attempt, p.cluster)).requestCode(
        { phoneNumber, channel: i % 5 === 0 ? DeliveryChannel.SMS : DeliveryChannel.WEB, requestId },
        { headers, timeoutMs },
      ),
    );
    opts.onProgress?.(++done);
    return { requestId, phoneNumber, outcome: r.outcome, codeRequestId: r.value?.codeRequest?.id };
  });
}

/** The requests the database holds for these phone numbers (ok and unknown calls alike). */
export async function requestIdsFor(p: Platform, ops: CodeRequestOp[]): Promise<Check & { ids: string[] }> {
  const r = await rows<{ id: string; phone_number: string }>(p.sql, "SELECT id, phone_number FROM provider.code_requests WHERE phone_number = ANY($1)", [ops.map((o) => o.phoneNumber)]);
  const perPhone = new Map<string, number>();
  for (const x of r) perPhone.set(x.phone_number, (perPhone.get(x.phone_number) ?? 0) + 1);
  const okMissing = ops.filter((o) => o.outcome === "ok" && perPhone.get(o.phoneNumber) !== 1).length;
  const failedThere = ops.filter((o) => o.outcome === "failed" && perPhone.has(o.phoneNumber)).length;
  const unknownTwice = ops.filter((o) => o.outcome === "unknown" && (perPhone.get(o.phoneNumber) ?? 0) > 1).length;
  const ok = okMissing === 0 && failedThere === 0 && unknownTwice === 0;
  return {
    ...check("each ok code request recorded exactly once", ok, `${r.length} requests recorded for ${ops.length} calls (${ops.filter((o) => o.outcome === "ok").length} ok), ${okMissing} ok not exactly once, ${failedThere} failed recorded, ${unknownTwice} unknown twice`),
    ids: r.map((x) => x.id),
  };
}
