// The callback endpoint the outside provider posts late codes to (plain HTTP on the
// provider service's port, next to the rpcs):
//
//   POST /provider/callbacks/<code request id>
//   {codeVerifier, status: "SUCCESS" | "LATE_SUCCESS", voucherCode, codeChallengeMethod?, requestId?, message?}
//
// The URL binds the callback to one request; the verifier proves the caller is the party
// that acknowledged it: BASE64URL(SHA256(codeVerifier)) must equal the challenge stored from
// the acknowledgement (S256 only, constant-time). Anything else is refused and changes
// nothing — no state, no code, no event:
//
//   200 {result: "ACCEPTED"}           the code is taken; `code_received` is emitted once
//   200 {result: "ALREADY_ACCEPTED"}   an identical replay of the accepted callback (idempotent)
//   400 {error: BAD_REQUEST | VERIFIER_LENGTH | VERIFIER_CHARSET | METHOD_NOT_SUPPORTED | STATUS_INVALID | CODE_INVALID | REQUEST_ID_MISMATCH}
//   403 {error: VERIFIER_MISMATCH}     the verifier does not hash to this request's challenge
//   404 {error: UNKNOWN_REQUEST}
//   409 {error: CALLBACK_ALREADY_USED} the verifier was already spent on a different code or status
//   409 {error: NOT_AWAITING_CALLBACK} the request has no pending callback (answered inline, expired, failed)
//   503 {error: NOT_YET_ACKNOWLEDGED}  + Retry-After: the acknowledgement is still being recorded; post again
import { createHash } from "node:crypto";
import type { Kysely } from "kysely";
import type { Registry } from "prom-client";
import { counter } from "../kit/events/metrics.js";
import type { Logger } from "../kit/log.js";
import { sendHttp, type HttpRoute, type NodeRequest, type NodeResponse } from "../kit/server.js";
import { SUPPORTED_METHOD, verifierMatches, verifierProblem } from "./domain/pkce.js";
import type { ProviderStatus } from "./domain/states.js";
import { codeReceivedRow } from "./events.js";
import { getCodeRequest, receiveCallbackCode } from "./store/requests.js";
import type { ProviderDB } from "./store/schema.js";

const PREFIX = "/provider/callbacks/";
const MAX_BODY_BYTES = 16 * 1024;
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const CODE = /^[\x21-\x7e]{1,128}$/;

type Outcome =
  | "ACCEPTED"
  | "ALREADY_ACCEPTED"
  | "BAD_REQUEST"
  | "VERIFIER_LENGTH"
  | "VERIFIER_CHARSET"
  | "METHOD_NOT_SUPPORTED"
  | "STATUS_INVALID"
  | "CODE_INVALID"
  | "REQUEST_ID_MISMATCH"
  | "VERIFIER_MISMATCH"
  | "UNKNOWN_REQUEST"
  | "CALLBACK_ALREADY_USED"
  | "NOT_AWAITING_CALLBACK"
  | "NOT_YET_ACKNOWLEDGED"
  | "PAYLOAD_TOO_LARGE";

const HTTP_STATUS: Record<Outcome, number> = {
  ACCEPTED: 200,
  ALREADY_ACCEPTED: 200,
  BAD_REQUEST: 400,
  VERIFIER_LENGTH: 400,
  VERIFIER_CHARSET: 400,
  METHOD_NOT_SUPPORTED: 400,
  STATUS_INVALID: 400,
  CODE_INVALID: 400,
  REQUEST_ID_MISMATCH: 400,
  VERIFIER_MISMATCH: 403,
  UNKNOWN_REQUEST: 404,
  CALLBACK_ALREADY_USED: 409,
  NOT_AWAITING_CALLBACK: 409,
  NOT_YET_ACKNOWLEDGED: 503,
  PAYLOAD_TOO_LARGE: 413,
};

class Refused extends Error {
  constructor(readonly outcome: Outcome, message: string) {
    super(message);
  }
}

export interface ParsedCallback {
  verifier: string;
  status: ProviderStatus;
  code: string;
}

/** Validates the body of a callback for request `id`; throws Refused. */
export function parseCallback(id: string, body: unknown): ParsedCallback {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new Refused("BAD_REQUEST", "the body must be a JSON object");
  const b = body as Record<string, unknown>;
  if (b.requestId !== undefined && b.requestId !== id) throw new Refused("REQUEST_ID_MISMATCH", "requestId does not name the request of this callback URL");
  // The method, when named, must be S256: a `plain` verifier is its own challenge.
  if (b.codeChallengeMethod !== undefined && b.codeChallengeMethod !== SUPPORTED_METHOD) {
    throw new Refused("METHOD_NOT_SUPPORTED", `code challenge method must be ${SUPPORTED_METHOD}`);
  }
  if (typeof b.codeVerifier !== "string") throw new Refused("BAD_REQUEST", "codeVerifier is required");
  const problem = verifierProblem(b.codeVerifier);
  if (problem === "VERIFIER_LENGTH") throw new Refused(problem, "codeVerifier must be 43 to 128 characters");
  if (problem === "VERIFIER_CHARSET") throw new Refused(problem, "codeVerifier may only contain A-Z a-z 0-9 - . _ ~");
  const status = b.status === "SUCCESS" ? "success" : b.status === "LATE_SUCCESS" ? "late_success" : undefined;
  if (!status) throw new Refused("STATUS_INVALID", 'status must be "SUCCESS" or "LATE_SUCCESS"');
  if (typeof b.voucherCode !== "string" || !CODE.test(b.voucherCode)) throw new Refused("CODE_INVALID", "voucherCode must be 1 to 128 printable characters");
  return { verifier: b.codeVerifier, status, code: b.voucherCode };
}

/** What identifies an accepted callback's content, so an identical replay can be told apart from a different one. */
const fingerprint = (c: ParsedCallback) => createHash("sha256").update(`${c.status}\n${c.code}`).digest("base64url");

async function readBody(req: NodeRequest): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new Refused("PAYLOAD_TOO_LARGE", `the body must be at most ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new Refused("BAD_REQUEST", "the body must be JSON");
  }
}

export interface CallbackDeps {
  db: Kysely<ProviderDB>;
  log: Logger;
  registry: Registry;
}

/** Accepts or refuses one callback; returns the outcome (for the route and for tests). */
export async function acceptCallback(db: Kysely<ProviderDB>, id: string, body: unknown): Promise<Outcome> {
  if (!ID.test(id)) return "UNKNOWN_REQUEST";
  const callback = parseCallback(id, body);
  const request = await getCodeRequest(db, id);
  if (!request) return "UNKNOWN_REQUEST";
  const challenge = request.codeChallenge;
  if (!challenge) {
    // Never acknowledged: either the worker is still recording the acknowledgement (the
    // provider may call back very fast) or the request never had a challenge at all.
    return request.state === "pending" ? "NOT_YET_ACKNOWLEDGED" : "NOT_AWAITING_CALLBACK";
  }
  if (!verifierMatches(callback.verifier, challenge)) return "VERIFIER_MISMATCH";

  const print = fingerprint(callback);
  const received = { code: callback.code, status: callback.status, fingerprint: print, at: new Date() };
  const announce = codeReceivedRow({ ...request, code: callback.code, providerStatus: callback.status, receivedAt: received.at });
  const accepted = Boolean(await receiveCallbackCode(db, id, challenge, received, announce));
  if (accepted) return "ACCEPTED";
  // The move did not apply: the verifier is spent, or the request is over.
  const now = await getCodeRequest(db, id);
  if (now?.callbackFingerprint === print) return "ALREADY_ACCEPTED";
  return now?.callbackFingerprint ? "CALLBACK_ALREADY_USED" : "NOT_AWAITING_CALLBACK";
}

export function callbackRoute(deps: CallbackDeps): HttpRoute {
  const outcomes = counter(deps.registry, "vouch_provider_callbacks_total", "Callbacks from the outside provider, by outcome.", ["outcome"]);
  const log = deps.log.child({ component: "callback" });
  return {
    method: "POST",
    path: `${PREFIX}*`,
    async handle(req: NodeRequest, res: NodeResponse) {
      const raw = (req.url ?? "").split("?")[0].slice(PREFIX.length);
      let id = "";
      let outcome: Outcome;
      let message: string | undefined;
      try {
        id = decodeURIComponent(raw);
      } catch {
        // a malformed %-escape names no request
      }
      try {
        outcome = await acceptCallback(deps.db, id, await readBody(req));
      } catch (err) {
        if (!(err instanceof Refused)) throw err;
        outcome = err.outcome;
        message = err.message;
      }
      outcomes.inc({ outcome });
      const status = HTTP_STATUS[outcome];
      if (status === 200) log.info({ codeRequestId: id, outcome }, "provider callback accepted");
      else log.warn({ codeRequestId: id, outcome, message }, "provider callback refused");
      const body = status === 200 ? { result: outcome } : { error: outcome, ...(message ? { message } : {}) };
      sendHttp(res, status, "application/json", JSON.stringify(body) + "\n", status === 503 ? { "retry-after": "1" } : {});
    },
  };
}
