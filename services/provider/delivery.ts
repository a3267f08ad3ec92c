// Delivery: consumes `voucher.purchased_code_stored` — the voucher service's word that it
// stored the code of a `provider.code_received` event for the phone number — and only then
// hands the code to the customer on the chosen channel, so every delivered code is on
// record (and listed by ListPurchasedCodes) before the customer can use it. A voucher
// service that is down or behind holds deliveries back; it never loses them.
//
//   WEB → succeeded/late_succeeded → delivered: the WatchCodeRequest stream (and
//         GetCodeRequest) show the code; the state change itself wakes the watchers.
//   SMS → the code is texted through the SmsSender, then → delivered, in one transaction
//         (the dev sink records in it; a real gateway is at least once, see sms.ts).
//
// A gateway that refuses the message, or stays down for `maxAttempts` deliveries, makes the
// request FAILED (undeliverable); the code stays stored for the phone number.
import type { MessageShape } from "@bufbuild/protobuf";
import type { Transaction } from "kysely";
import type { PurchasedCodeStoredSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { DeliveryChannel } from "../../gen/vouch/type/v1/provider_code_pb.js";
import type { EventMeta } from "../kit/events/index.js";
import { unavailable } from "../kit/errors.js";
import type { Logger } from "../kit/log.js";
import { MOVES, smsText } from "./domain/states.js";
import { SmsRejected, type SmsSender } from "./sms.js";
import { fail, lockCodeRequest, markDelivered } from "./store/requests.js";
import type { ProviderDB } from "./store/schema.js";

export interface DeliveryDeps {
  sms: SmsSender;
  /** Deliveries of one event before an SMS that cannot be sent fails the request. */
  maxAttempts: number;
  log: Logger;
}

export function codeStoredHandler(deps: DeliveryDeps) {
  const { sms, log } = deps;
  return async (trx: Transaction<ProviderDB>, event: MessageShape<typeof PurchasedCodeStoredSchema>, meta: EventMeta): Promise<void> => {
    const id = event.codeRequestId;
    if (event.channel !== DeliveryChannel.SMS) {
      // The state change is the delivery: it wakes the request's watchers.
      await markDelivered(trx, id);
      return;
    }
    // Locked: the text is sent once even if two replicas got the event.
    const request = await lockCodeRequest(trx, id);
    if (!request || !(MOVES.deliver.from as readonly string[]).includes(request.state)) return;
    try {
      await sms.send(trx, { to: request.phoneNumber, body: smsText.code(request.code!, request.providerStatus!), codeRequestId: id, purpose: "code" });
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (err instanceof SmsRejected || meta.deliveryCount >= deps.maxAttempts) {
        await fail(trx, id, "failUndeliverable", { message: `the code could not be sent by SMS: ${reason}`, notice: false });
        log.warn({ codeRequestId: id, reason, deliveries: meta.deliveryCount }, "code could not be delivered by SMS; request FAILED");
        return;
      }
      throw unavailable("SMS_GATEWAY_UNAVAILABLE", reason);
    }
    await markDelivered(trx, id);
  };
}
