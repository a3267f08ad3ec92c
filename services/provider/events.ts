// The provider's events, written to its outbox in the statement of the change they report.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CodeReceivedSchema, CodeRequestedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { DeliveryChannel, ProviderCodeStatus } from "../../gen/vouch/type/v1/provider_code_pb.js";
import { outboxRow, type OutboxRow } from "../kit/events/index.js";
import type { Channel, ProviderStatus } from "./domain/states.js";
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
export const CHANNEL_FROM_PROTO = new Map<DeliveryChannel, Channel>([
  [DeliveryChannel.WEB, "web"],
  [DeliveryChannel.SMS, "sms"],
]);

export const STATUS_TO_PROTO: Record<ProviderStatus, ProviderCodeStatus> = {
  success: ProviderCodeStatus.SUCCESS,
  late_success: ProviderCodeStatus.LATE_SUCCESS,
};

/** The `code_requested` outbox row of a request about to be written (in the same statement). */
export function codeRequestedRow(r: CodeRequestRow): OutboxRow {
  return outboxRow({
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

/** What a `code_received` event says: the request's facts and the code it received. */
export interface ReceivedCodeFacts {
  id: string;
  userId: string;
  phoneNumber: string;
  channel: Channel;
  code: string;
  providerStatus: ProviderStatus;
  receivedAt: Date;
}

/**
 * The `code_received` outbox row of a move that is about to receive a code, for the store to
 * write in the move's own statement (written only if the move applies: once per request).
 */
export function codeReceivedRow(r: ReceivedCodeFacts): OutboxRow {
  return outboxRow({
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
