// The provider's events, written to its outbox in the transaction of the change they report.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Transaction } from "kysely";
import { CodeReceivedSchema, CodeRequestedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { DeliveryChannel, ProviderCodeStatus } from "../../gen/vouch/type/v1/provider_code_pb.js";
import { enqueueEvent } from "../kit/events/index.js";
import type { Channel, ProviderStatus } from "./domain/states.js";
import type { ProviderDB } from "./store/schema.js";
import type { CodeRequestRow } from "./store/requests.js";

/**
 * Seed 002's `request-code` and `receive-code` topics, and the voucher service's word that
 * it stored a received code (delivery waits for it).
 */
export const SUBJECTS = {
  codeRequested: "provider.code_requested",
  codeReceived: "provider.code_received",
  purchasedCodeStored: "voucher.purchased_code_stored",
} as const;

export const CHANNEL_TO_PROTO: Record<Channel, DeliveryChannel> = { web: DeliveryChannel.WEB, sms: DeliveryChannel.SMS };
export const STATUS_TO_PROTO: Record<ProviderStatus, ProviderCodeStatus> = {
  success: ProviderCodeStatus.SUCCESS,
  late_success: ProviderCodeStatus.LATE_SUCCESS,
};

export function enqueueCodeRequested(trx: Transaction<ProviderDB>, r: CodeRequestRow): Promise<string> {
  return enqueueEvent(trx, {
    subject: SUBJECTS.codeRequested,
    schema: CodeRequestedSchema,
    message: {
      codeRequestId: r.id,
      userId: r.userId,
      phoneNumber: r.phoneNumber,
      channel: CHANNEL_TO_PROTO[r.channel],
      requestTime: timestampFromDate(r.createdAt),
    },
  });
}

/** Only ever called by the transaction whose move received the code: once per request. */
export function enqueueCodeReceived(trx: Transaction<ProviderDB>, r: CodeRequestRow): Promise<string> {
  if (!r.code || !r.providerStatus || !r.receivedAt) throw new Error(`code request ${r.id} has no received code to announce`);
  return enqueueEvent(trx, {
    subject: SUBJECTS.codeReceived,
    schema: CodeReceivedSchema,
    message: {
      codeRequestId: r.id,
      userId: r.userId,
      phoneNumber: r.phoneNumber,
      channel: CHANNEL_TO_PROTO[r.channel],
      code: r.code,
      status: STATUS_TO_PROTO[r.providerStatus],
      receiveTime: timestampFromDate(r.receivedAt),
    },
  });
}
