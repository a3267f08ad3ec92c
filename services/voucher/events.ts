// The events the voucher service writes to its outbox (always in the transaction of the change).
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Transaction } from "kysely";
import { GenerationRequestedSchema } from "../../gen/vouch/events/v1/events_pb.js";
import { enqueueEvent } from "../kit/events/index.js";
import type { Job } from "./store/jobs.js";
import type { VoucherDB } from "./store/schema.js";

export const GENERATION_REQUESTED = "voucher.generation_requested";
export const CODE_RECEIVED = "provider.code_received";

export function requestGeneration(trx: Transaction<VoucherDB>, job: Job): Promise<string> {
  return enqueueEvent(trx, {
    subject: GENERATION_REQUESTED,
    schema: GenerationRequestedSchema,
    message: { generationJobId: job.id, bookId: job.bookId, codeCount: job.requestedCount, requestTime: timestampNow() },
  });
}
