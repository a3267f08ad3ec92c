// The bank's transfer webhook (plain HTTP on the promotion port, next to the rpcs):
//
//   POST /promotion/bank/transfers
//   X-Vouch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
//   {"transactionId": "FT24011234", "reference": "VCH7K3Q9XPA", "amountMinorUnits": "135000", "currencyCode": "VND"}
//
// `reference` may be replaced by `description` (the transfer's free text; the reference is
// found in it). The signature covers the exact bytes received and a timestamp within the
// tolerance (replays of old deliveries are refused); it is compared in constant time. A
// verified notification does what ConfirmTransfer does, with the bank's transaction id as
// the request id, so the bank retrying a delivery, or an operator confirming the same
// transaction by rpc, completes the order once.
//
//   200 {result: "COMPLETED" | "PROCESSING" | "FAILED", topUpId}    accepted (or an identical replay)
//   400 {error: BAD_REQUEST}            401 {error: SIGNATURE_INVALID | SIGNATURE_EXPIRED}
//   404 {error: TOP_UP_NOT_FOUND}       409 {error: TRANSFER_AMOUNT_MISMATCH | TOP_UP_EXPIRED | TOP_UP_CANCELLED | TOP_UP_ALREADY_PAID | REQUEST_ID_REUSED}
//   503 {error: TEMPORARILY_UNAVAILABLE} + Retry-After (deliver again later)
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Registry } from "prom-client";
import { VouchError } from "../kit/errors.js";
import { counter } from "../kit/events/metrics.js";
import type { Logger } from "../kit/log.js";
import { sendHttp, type HttpRoute, type NodeRequest } from "../kit/server.js";
import { normaliseReference } from "./domain/model.js";
import { confirmationFingerprint } from "./confirmation.js";
import type { TopUps } from "./topups.js";

export const WEBHOOK_PATH = "/promotion/bank/transfers";
export const SIGNATURE_HEADER = "x-vouch-signature";
const MAX_BODY_BYTES = 16 * 1024;

/** The header value for `body` signed at `unixSeconds` (for banks' test tools, our tests and the bench). */
export function signWebhook(secret: string, body: string, unixSeconds = Math.floor(Date.now() / 1000)): string {
  return `t=${unixSeconds},v1=${createHmac("sha256", secret).update(`${unixSeconds}.${body}`).digest("hex")}`;
}

export type SignatureProblem = "SIGNATURE_INVALID" | "SIGNATURE_EXPIRED";

export function verifySignature(secret: string, header: string | undefined, body: Buffer, toleranceMs: number, nowMs = Date.now()): SignatureProblem | null {
  const parts = new Map((header ?? "").split(",").map((p) => p.trim().split("=", 2) as [string, string]));
  const t = parts.get("t");
  const v1 = parts.get("v1");
  if (!t || !/^[0-9]{1,12}$/.test(t) || !v1 || !/^[0-9a-f]{64}$/.test(v1)) return "SIGNATURE_INVALID";
  const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest();
  if (!timingSafeEqual(expected, Buffer.from(v1, "hex"))) return "SIGNATURE_INVALID";
  if (Math.abs(nowMs - Number(t) * 1000) > toleranceMs) return "SIGNATURE_EXPIRED";
  return null;
}

interface Notification {
  transactionId: string;
  reference: string;
  minor: bigint;
  currency: string;
}

const REFERENCE_IN_TEXT = /VCH[23456789A-HJKMNP-Z]{8}/;

function parseNotification(raw: Buffer): Notification | undefined {
  let b: Record<string, unknown>;
  try {
    b = JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (!b || typeof b !== "object") return undefined;
  const { transactionId, reference, description, amountMinorUnits, currencyCode } = b;
  if (typeof transactionId !== "string" || !/^[\x21-\x7e]{1,64}$/.test(transactionId)) return undefined;
  const ref = typeof reference === "string" ? normaliseReference(reference) : typeof description === "string" ? REFERENCE_IN_TEXT.exec(normaliseReference(description))?.[0] : undefined;
  if (!ref) return undefined;
  const amount = typeof amountMinorUnits === "number" && Number.isSafeInteger(amountMinorUnits) ? String(amountMinorUnits) : amountMinorUnits;
  if (typeof amount !== "string" || !/^[0-9]{1,18}$/.test(amount)) return undefined;
  if (typeof currencyCode !== "string" || !/^[A-Z]{3}$/.test(currencyCode)) return undefined;
  return { transactionId, reference: ref, minor: BigInt(amount), currency: currencyCode };
}

async function readBody(req: NodeRequest): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

const CONFLICTS = new Set(["TRANSFER_AMOUNT_MISMATCH", "TOP_UP_EXPIRED", "TOP_UP_CANCELLED", "TOP_UP_ALREADY_PAID", "REQUEST_ID_REUSED"]);

export function bankWebhookRoute(deps: { topUps: TopUps; secret: string; toleranceMs: number; log: Logger; registry: Registry }): HttpRoute {
  const outcomes = counter(deps.registry, "vouch_promotion_bank_webhooks_total", "Bank transfer notifications, by outcome.", ["outcome"]);
  const log = deps.log.child({ component: "bank-webhook" });
  return {
    method: "POST",
    path: WEBHOOK_PATH,
    async handle(req, res) {
      const reply = (status: number, body: Record<string, string>, headers: Record<string, string> = {}) => {
        outcomes.inc({ outcome: body.result ?? body.error });
        sendHttp(res, status, "application/json", JSON.stringify(body) + "\n", headers);
      };
      const raw = await readBody(req);
      if (!raw) return reply(413, { error: "PAYLOAD_TOO_LARGE" });
      const header = req.headers[SIGNATURE_HEADER];
      const problem = verifySignature(deps.secret, Array.isArray(header) ? header[0] : header, raw, deps.toleranceMs);
      if (problem) {
        log.warn({ problem }, "bank webhook refused: bad signature");
        return reply(401, { error: problem });
      }
      const n = parseNotification(raw);
      if (!n) return reply(400, { error: "BAD_REQUEST", message: "expected transactionId, reference (or description), amountMinorUnits and currencyCode" });
      try {
        const amountPaid = { minor: n.minor, currency: n.currency };
        const order = await deps.topUps.confirm({
          reference: n.reference,
          amountPaid,
          requestId: n.transactionId,
          fingerprint: confirmationFingerprint(n.reference, amountPaid),
        });
        log.info({ topUpId: order.id, transactionId: n.transactionId, state: order.state }, "bank transfer accepted");
        return reply(200, { result: order.state.toUpperCase(), topUpId: order.id });
      } catch (err) {
        if (!(err instanceof VouchError)) throw err;
        if (err.reason === "TOP_UP_NOT_FOUND") return reply(404, { error: err.reason });
        if (CONFLICTS.has(err.reason)) return reply(409, { error: err.reason, message: err.message });
        if (err.reason === "TEMPORARILY_UNAVAILABLE") return reply(503, { error: err.reason }, { "retry-after": "1" });
        throw err;
      }
    },
  };
}
