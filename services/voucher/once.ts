// Runs an effect in one transaction, at most once per request id (AIP-155): the request
// id is claimed first, the effect applied, and the encoded response stored, all in the
// same transaction. A retry with the same request gets the stored bytes back; the same id
// with a different request is ALREADY_EXISTS (REQUEST_ID_REUSED).
import type { Kysely, Transaction } from "kysely";
import { alreadyExists } from "../kit/errors.js";
import { claimRequest, recordResponse, type RequestKey } from "./store/requests.js";
import type { VoucherDB } from "./store/schema.js";
import { transaction } from "./store/tx.js";

export interface Idempotency<R> {
  key: RequestKey;
  /** The response as it goes on the wire (binary protobuf), stored with the effect. */
  encode: (result: R) => Uint8Array;
}

/** A replayed response, or this call's result (and its encoding when a request id was given). */
export type Outcome<R> = { replay: Uint8Array } | { result: R; encoded?: Uint8Array };

export function runOnce<R>(
  db: Kysely<VoucherDB>,
  idem: Idempotency<R> | undefined,
  work: (trx: Transaction<VoucherDB>) => Promise<R>,
): Promise<Outcome<R>> {
  return transaction(db, async (trx): Promise<Outcome<R>> => {
    if (idem) {
      const claim = await claimRequest(trx, idem.key);
      if (claim.kind === "replay") return { replay: claim.response };
      if (claim.kind === "mismatch") {
        throw alreadyExists("REQUEST_ID_REUSED", `request_id "${idem.key.requestId}" was already used with a different request`, { requestId: idem.key.requestId });
      }
    }
    const result = await work(trx);
    if (!idem) return { result };
    const encoded = idem.encode(result);
    await recordResponse(trx, idem.key, encoded);
    return { result, encoded };
  });
}
