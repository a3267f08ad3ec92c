// SmsSender: how a text message leaves the service. Two adapters:
//
// - the dev sink (default, SMS_GATEWAY_URL unset) records each message in the `sent_sms`
//   table inside the caller's transaction, so a rolled-back delivery records nothing and
//   operators and tests read them with ListSentSms;
// - the HTTP gateway POSTs {to, body, reference} as JSON to SMS_GATEWAY_URL (with
//   `Authorization: Bearer SMS_GATEWAY_TOKEN` when set). Sending is an outside effect, so it
//   is at-least-once: `reference` (also the Idempotency-Key header) is stable per request and
//   purpose, for gateways that deduplicate.
import type { Transaction } from "kysely";
import type { Logger } from "../kit/log.js";
import type { ProviderDB } from "./store/schema.js";
import { recordSms } from "./store/sms.js";

export interface SmsMessage {
  /** E.164. */
  to: string;
  body: string;
  codeRequestId: string;
  /** What the message is for: one of each per request. */
  purpose: "code" | "failed" | "expired";
}

/** The gateway will never take this message (e.g. a number it cannot reach): do not retry. */
export class SmsRejected extends Error {
  override name = "SmsRejected";
}

export interface SmsSender {
  /** `sink` keeps copies readable with ListSentSms; `gateway` really sends and keeps none. */
  readonly kind: "sink" | "gateway";
  /** Throws SmsRejected for a permanent refusal, anything else for a failure worth retrying. */
  send(trx: Transaction<ProviderDB>, message: SmsMessage): Promise<void>;
}

export function createDevSmsSink(log: Logger): SmsSender {
  return {
    kind: "sink",
    async send(trx, m) {
      await recordSms(trx, { phoneNumber: m.to, body: m.body, codeRequestId: m.codeRequestId, purpose: m.purpose });
      log.debug({ to: m.to, codeRequestId: m.codeRequestId, purpose: m.purpose }, "sms recorded by the dev sink");
    },
  };
}

export function createHttpSmsGateway(opts: { url: string; token?: string; timeoutMs?: number; log: Logger }): SmsSender {
  const timeoutMs = opts.timeoutMs ?? 5_000;
  return {
    kind: "gateway",
    async send(_trx, m) {
      const reference = `${m.codeRequestId}:${m.purpose}`;
      const headers: Record<string, string> = { "content-type": "application/json", "idempotency-key": reference };
      if (opts.token) headers.authorization = `Bearer ${opts.token}`;
      let res: Response;
      try {
        res = await fetch(opts.url, {
          method: "POST",
          headers,
          body: JSON.stringify({ to: m.to, body: m.body, reference }),
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (err) {
        throw new Error(`SMS gateway unreachable: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      await res.body?.cancel();
      if (res.ok) {
        opts.log.debug({ codeRequestId: m.codeRequestId, purpose: m.purpose }, "sms handed to the gateway");
        return;
      }
      if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
        throw new SmsRejected(`SMS gateway refused the message with HTTP ${res.status}`);
      }
      throw new Error(`SMS gateway answered HTTP ${res.status}`);
    },
  };
}
