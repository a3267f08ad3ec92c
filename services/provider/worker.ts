// The worker: consumes `provider.code_requested` and calls the outside provider for each
// pending request, through the circuit breaker.
//
//   inline code      → pending → succeeded/late_succeeded, and `code_received` in the same transaction
//   acknowledgement  → pending → acknowledged, keeping the S256 challenge for the callback
//   breaker open     → nothing changes; the event is handed back (`retryLater`) and
//                      redelivered after a backoff, as often as it takes until the request's
//                      deadline: an outage, not the request's fault, so it is no failure
//   provider failure → the attempt is counted; retried with backoff until maxAttempts, then FAILED
//   refusal          → FAILED at once (a 4xx or a `plain` challenge will not change on a retry)
//
// The kit consumer runs this inside the transaction that records the event in the inbox,
// so an effect and its event commit together, and a redelivery of a handled event is a no-op.
import type { Kysely, Transaction } from "kysely";
import type { MessageShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { CodeRequestedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { unavailable } from "../kit/errors.js";
import { retryLater, type EventMeta } from "../kit/events/index.js";
import type { Logger } from "../kit/log.js";
import { BreakerOpen, type ProviderGateway } from "./breaker.js";
import { CHANNEL_FROM_PROTO, codeReceivedRow } from "./events.js";
import { ProviderRefusal } from "./provider-client.js";
import { acknowledge, fail, receiveInlineCode, recordFailedAttempt } from "./store/requests.js";
import type { ProviderDB } from "./store/schema.js";

export interface WorkerDeps {
  /** For counting failed attempts outside the consumer's transaction (which rolls back to retry). */
  db: Kysely<ProviderDB>;
  gateway: ProviderGateway;
  maxAttempts: number;
  /** Redelivery delays while the breaker is open, by delivery (the last repeats). */
  retryBackoffMs: number[];
  /** A request not answered this long after it was made is not sent to the provider any more. */
  requestDeadlineMs: number;
  callbackUrl: (codeRequestId: string) => string;
  log: Logger;
}

export function callbackPath(codeRequestId: string): string {
  return `/provider/callbacks/${encodeURIComponent(codeRequestId)}`;
}

export function codeRequestedHandler(deps: WorkerDeps) {
  const { gateway, log } = deps;
  const backoff = (deliveryCount: number) => deps.retryBackoffMs[Math.min(deliveryCount, deps.retryBackoffMs.length) - 1] ?? 1_000;
  return async (trx: Transaction<ProviderDB>, event: MessageShape<typeof CodeRequestedSchema>, meta: EventMeta): Promise<void> => {
    const id = event.codeRequestId;
    // No read first: the event says what to ask for, and a fresh event (the kit's inbox
    // has already dropped redeliveries of handled ones) means the request was never
    // answered, since every answer commits together with this consumer's inbox row. The
    // one way it can have moved on is the deadline sweep: past its deadline it is not sent
    // to the provider (a code bought then could not be given to anyone).
    const requestedAt = event.requestTime ? timestampMs(event.requestTime) : Date.now();
    if (Date.now() >= requestedAt + deps.requestDeadlineMs) {
      await fail(trx, id, "failUnreachable", { message: "the provider did not answer the request by the deadline", notice: true });
      return;
    }

    let answer;
    try {
      answer = await gateway.requestCode({ requestId: id, phoneNumber: event.phoneNumber, callbackUrl: deps.callbackUrl(id) });
    } catch (err) {
      if (err instanceof BreakerOpen) {
        // Wait, do not fail: the request is retried when the breaker lets calls through again.
        throw retryLater(backoff(meta.deliveryCount), err.message);
      }
      const reason = err instanceof Error ? err.message : String(err);
      if (err instanceof ProviderRefusal) {
        await fail(trx, id, "failUnreachable", { message: reason, lastError: reason, notice: true, countAttempt: true });
        log.warn({ codeRequestId: id, reason }, "provider refused the request; request FAILED");
        return;
      }
      const attempts = await recordFailedAttempt(deps.db, id, reason);
      if (attempts === undefined) return; // no longer pending: swept at its deadline meanwhile
      if (attempts >= deps.maxAttempts) {
        await fail(trx, id, "failUnreachable", { message: `the provider failed ${attempts} times; last: ${reason}`, notice: true });
        log.warn({ codeRequestId: id, attempts, reason }, "provider kept failing; request FAILED");
        return;
      }
      throw unavailable("PROVIDER_UNAVAILABLE", `provider call ${attempts} of ${deps.maxAttempts} failed: ${reason}`);
    }

    if (answer.kind === "code") {
      // The event's facts are the request's own (written together with it), so its
      // code_received goes in the statement that receives the code.
      const channel = CHANNEL_FROM_PROTO.get(event.channel);
      if (!channel) throw new Error(`code_requested event of ${id} has no delivery channel`);
      const received = { code: answer.code, status: answer.status, at: new Date() };
      const facts = { id, userId: event.userId, phoneNumber: event.phoneNumber, channel, code: answer.code, providerStatus: answer.status, receivedAt: received.at };
      // The handler's last statement: its COMMIT goes with it (the consumer adds nothing after).
      await receiveInlineCode(trx, id, received, codeReceivedRow(facts), { last: true });
    } else {
      await acknowledge(trx, id, answer.codeChallenge);
    }
  };
}
