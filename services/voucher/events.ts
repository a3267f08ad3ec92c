// The events the voucher service writes to its outbox (always in the transaction, or the statement, of the change).
import { timestampFromDate, timestampNow } from "@bufbuild/protobuf/wkt";
import type { Transaction } from "kysely";
import { GenerationRequestedSchema, PurchasedCodeStoredSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { enqueueEvent, outboxRow, type OutboxRow } from "../kit/events/index.js";
import type { Job } from "./store/jobs.js";
import type { PurchasedCode } from "./store/purchased.js";
import type { VoucherDB } from "./store/schema.js";

export const GENERATION_REQUESTED = "voucher.generation_requested";
export const CODE_RECEIVED = "provider.code_received";
export const PURCHASED_CODE_STORED = "voucher.purchased_code_stored";

export function requestGeneration(trx: Transaction<VoucherDB>, job: Job): Promise<string> {
  return enqueueEvent(trx, {
    subject: GENERATION_REQUESTED,
    schema: GenerationRequestedSchema,
    message: { generationJobId: job.id, bookId: job.bookId, codeCount: job.requestedCount, requestTime: timestampNow() },
  });
}

/** Tells the provider the code is on record, so it may now deliver it. */
export function purchasedCodeStoredRow(p: PurchasedCode): OutboxRow {
  return outboxRow({
    subject: PURCHASED_CODE_STORED,
    schema: PurchasedCodeStoredSchema,
    message: {
      codeRequestId: p.codeRequestId,
      purchasedCodeId: p.id,
      userId: p.userId,
      phoneNumber: p.phoneNumber,
      channel: p.channel,
      storeTime: timestampFromDate(p.createdAt),
    },
  });
}
