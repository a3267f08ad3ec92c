// The ProviderService rpcs: protocol in, store or domain call, protocol out. Access
// policies (authenticated, admin) are declared in provider.proto and enforced by the shared
// interceptor before any of these run; ownership ("a customer sees only their own
// requests") is checked here.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import {
  CodeRequestSchema,
  CodeRequestState,
  ProviderService,
  RequestCodeRequestSchema,
  RequestCodeResponseSchema,
  RetryCodeRequestRequestSchema,
  RetryCodeRequestResponseSchema,
  SentSmsSchema,
  type CodeRequest,
} from "../../gen/vouch/provider/v1/provider_pb.js";
import { requireCaller, type Caller } from "../kit/context.js";
import { failedPrecondition, invalidArgument, notFound, permissionDenied, unavailable, type FieldViolation } from "../kit/errors.js";
import { fingerprintRequest, requestIdViolation, runIdempotent } from "../kit/idempotency.js";
import type { RateLimiter } from "../kit/ratelimit.js";
import type { ProviderGateway } from "./breaker.js";
import type { ChangeFeed } from "./changes.js";
import { normalizePhone } from "../kit/phone.js";
import { isFinal, type RequestState } from "./domain/states.js";
import { CHANNEL_FROM_PROTO, CHANNEL_TO_PROTO, codeRequestedRow, STATUS_TO_PROTO } from "./events.js";
import { decodePageToken, page, pageSize } from "../kit/paging.js";
import type { SmsSender } from "./sms.js";
import { getCodeRequest, insertCodeRequest, insertCodeRequestOnce, listCodeRequests, newCodeRequest, type CodeRequestRow } from "./store/requests.js";
import type { ProviderDB } from "./store/schema.js";
import { listSentSms } from "./store/sms.js";

export interface ProviderHandlerDeps {
  db: Kysely<ProviderDB>;
  gateway: ProviderGateway;
  feed: ChangeFeed;
  sms: SmsSender;
  requestDeadlineMs: number;
  watchMaxMs: number;
  /** How often a watcher re-reads its request when no notification came (a safety net). */
  watchPollMs?: number;
  /** RequestCode limits by user and by phone number (unset: none). */
  limits?: { perUser?: RateLimiter; perPhoneNumber?: RateLimiter };
}

const STATE_TO_PROTO: Record<RequestState, CodeRequestState> = {
  pending: CodeRequestState.PENDING,
  acknowledged: CodeRequestState.ACKNOWLEDGED,
  succeeded: CodeRequestState.SUCCEEDED,
  late_succeeded: CodeRequestState.LATE_SUCCEEDED,
  delivered: CodeRequestState.DELIVERED,
  failed: CodeRequestState.FAILED,
  expired: CodeRequestState.EXPIRED,
};
const STATE_FROM_PROTO = new Map(Object.entries(STATE_TO_PROTO).map(([k, v]) => [v, k as RequestState]));
const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);

/**
 * Who reads the request. A customer sees the code only once it was delivered (or kept
 * for the phone number when an SMS could not be sent): before that it may not be stored
 * yet, and a code shown early would be one we might have no record of. Operators see it
 * as soon as it was received.
 */
export type Audience = "customer" | "operator";
const CODE_SHOWN_TO_CUSTOMERS: readonly RequestState[] = ["delivered", "failed"];

export function codeRequestToProto(r: CodeRequestRow, audience: Audience = "operator"): CodeRequest {
  const showCode = audience === "operator" || CODE_SHOWN_TO_CUSTOMERS.includes(r.state);
  return create(CodeRequestSchema, {
    id: r.id,
    userId: r.userId,
    phoneNumber: r.phoneNumber,
    channel: CHANNEL_TO_PROTO[r.channel],
    state: STATE_TO_PROTO[r.state],
    statusMessage: r.statusMessage,
    code: showCode ? (r.code ?? "") : "",
    providerStatus: r.providerStatus ? STATUS_TO_PROTO[r.providerStatus] : undefined,
    retryOfCodeRequestId: r.retryOfId ?? "",
    attemptCount: r.attemptCount,
    failureMessage: r.failureMessage ?? "",
    createTime: ts(r.createdAt),
    updateTime: ts(r.updatedAt),
    acknowledgeTime: ts(r.acknowledgedAt),
    receiveTime: ts(r.receivedAt),
    deliverTime: ts(r.deliveredAt),
    expireTime: ts(r.expireAt),
  });
}

/** Admins, and services acting for them, see every request; customers only their own. */
const privileged = (caller: Caller) => caller.roles.includes("ADMIN") || caller.roles.includes("SERVICE");

function phoneViolation(phone: string, required: boolean): [string | undefined, FieldViolation | undefined] {
  if (!phone.trim()) return [undefined, required ? { field: "phone_number", reason: "PHONE_NUMBER_REQUIRED", description: "is required" } : undefined];
  const normal = normalizePhone(phone);
  if (!normal) return [undefined, { field: "phone_number", reason: "PHONE_NUMBER_INVALID", description: "must be a valid phone number in E.164 form, e.g. +84909123456" }];
  return [normal, undefined];
}

function throwIf(violations: (FieldViolation | undefined)[]) {
  const found = violations.filter((v): v is FieldViolation => v !== undefined);
  if (found.length) throw invalidArgument(found);
}

export function createProviderHandlers(deps: ProviderHandlerDeps): ServiceImpl<typeof ProviderService> {
  const { db, gateway, feed } = deps;
  const watchPollMs = deps.watchPollMs ?? 2_000;

  /** The request if the caller may read it; NOT_OWNER for customers whether or not it exists. */
  async function readable(id: string, ctx: HandlerContext): Promise<{ row: CodeRequestRow; audience: Audience }> {
    throwIf([id ? undefined : { field: "code_request_id", reason: "CODE_REQUEST_ID_REQUIRED", description: "is required" }]);
    const caller = requireCaller(ctx);
    const row = await getCodeRequest(db, id);
    if (!privileged(caller)) {
      if (!row || row.userId !== caller.subject) throw permissionDenied("NOT_OWNER", "this code request belongs to another user");
      return { row, audience: "customer" };
    }
    if (!row) throw notFound("CODE_REQUEST_NOT_FOUND", `code request ${id} does not exist`, { codeRequestId: id });
    return { row, audience: "operator" };
  }

  return {
    async requestCode(req, ctx) {
      const caller = requireCaller(ctx);
      const [phoneNumber, badPhone] = phoneViolation(req.phoneNumber, true);
      const channel = CHANNEL_FROM_PROTO.get(req.channel);
      throwIf([
        badPhone,
        channel ? undefined : { field: "channel", reason: "CHANNEL_REQUIRED", description: "must be DELIVERY_CHANNEL_WEB or DELIVERY_CHANNEL_SMS" },
        requestIdViolation(req.requestId, true),
      ]);
      // Every new request buys a code: bound how fast one user, or anyone for one phone
      // number, can do it (RESOURCE_EXHAUSTED / RATE_LIMITED with RetryInfo).
      await deps.limits?.perUser?.enforce(caller.subject);
      await deps.limits?.perPhoneNumber?.enforce(phoneNumber!);
      // The request, its event and the response for replays: one statement, one round trip.
      const row = newCodeRequest({ userId: caller.subject, phoneNumber: phoneNumber!, channel: channel!, deadlineMs: deps.requestDeadlineMs });
      const response = create(RequestCodeResponseSchema, { codeRequest: codeRequestToProto(row) });
      const key = { operation: "RequestCode", requestId: req.requestId, caller: caller.subject, fingerprint: fingerprintRequest(RequestCodeRequestSchema, req) };
      const claim = await insertCodeRequestOnce(db, key, row, codeRequestedRow(row), toBinary(RequestCodeResponseSchema, response));
      return claim.kind === "replay" ? fromBinary(RequestCodeResponseSchema, claim.response) : response;
    },

    async getCodeRequest(req, ctx) {
      const { row, audience } = await readable(req.codeRequestId, ctx);
      return { codeRequest: codeRequestToProto(row, audience) };
    },

    async *watchCodeRequest(req, ctx) {
      const id = req.codeRequestId;
      // Subscribe before the first read, so a change between the read and the wait is not missed.
      let changed = false;
      let wake: (() => void) | undefined;
      const unsubscribe = feed.subscribe(id, () => {
        changed = true;
        wake?.();
      });
      try {
        const first = await readable(id, ctx);
        const audience = first.audience;
        let current = first.row;
        yield { codeRequest: codeRequestToProto(current, audience) };
        const endAt = Date.now() + deps.watchMaxMs;
        while (!isFinal(current.state) && !ctx.signal.aborted && Date.now() < endAt) {
          if (!changed) {
            await new Promise<void>((resolve) => {
              const timer = setTimeout(done, Math.min(watchPollMs, Math.max(0, endAt - Date.now())));
              ctx.signal.addEventListener("abort", done, { once: true });
              wake = done;
              function done() {
                clearTimeout(timer);
                ctx.signal.removeEventListener("abort", done);
                wake = undefined;
                resolve();
              }
            });
          }
          changed = false;
          if (ctx.signal.aborted) return;
          const next = await getCodeRequest(db, id);
          if (next && next.state !== current.state) {
            current = next;
            yield { codeRequest: codeRequestToProto(current, audience) };
          }
        }
      } finally {
        unsubscribe();
      }
    },

    async listCodeRequests(req) {
      const limit = pageSize(req.pageSize);
      const state = req.state === CodeRequestState.UNSPECIFIED ? undefined : STATE_FROM_PROTO.get(req.state);
      const [phoneNumber, badPhone] = phoneViolation(req.phoneNumber, false);
      throwIf([
        badPhone,
        req.state !== CodeRequestState.UNSPECIFIED && !state ? { field: "state", reason: "STATE_INVALID", description: "is not a code request state" } : undefined,
      ]);
      const filters = { state, phoneNumber, userId: req.userId || undefined };
      const beforeId = decodePageToken<string>(req.pageToken, filters);
      const rows = await listCodeRequests(db, filters, { beforeId, limit: limit + 1 });
      const { items, next } = page(rows, limit, filters, (last) => last.id);
      return { codeRequests: items.map((r) => codeRequestToProto(r)), nextPageToken: next };
    },

    async retryCodeRequest(req, ctx) {
      const caller = requireCaller(ctx);
      throwIf([
        req.codeRequestId ? undefined : { field: "code_request_id", reason: "CODE_REQUEST_ID_REQUIRED", description: "is required" },
        requestIdViolation(req.requestId, false),
      ]);
      return runIdempotent(db, {
        operation: "RetryCodeRequest",
        requestId: req.requestId,
        caller: caller.subject,
        fingerprint: fingerprintRequest(RetryCodeRequestRequestSchema, req),
        responseSchema: RetryCodeRequestResponseSchema,
        run: async (trx) => {
          const failed = await getCodeRequest(trx, req.codeRequestId);
          if (!failed) throw notFound("CODE_REQUEST_NOT_FOUND", `code request ${req.codeRequestId} does not exist`, { codeRequestId: req.codeRequestId });
          if (failed.state !== "failed") {
            throw failedPrecondition("CODE_REQUEST_NOT_RETRYABLE", `only FAILED requests can be retried; this one is ${failed.state.toUpperCase()}`, {
              state: `CODE_REQUEST_STATE_${failed.state.toUpperCase()}`,
            });
          }
          // Needs the provider now: while the breaker is open, say when to try again.
          if (gateway.state() === "open") {
            throw unavailable("PROVIDER_UNAVAILABLE", "the voucher provider is failing; the circuit breaker is open", gateway.retryAfterMs());
          }
          const row = newCodeRequest({ userId: failed.userId, phoneNumber: failed.phoneNumber, channel: failed.channel, retryOfId: failed.id, deadlineMs: deps.requestDeadlineMs });
          await insertCodeRequest(trx, row, codeRequestedRow(row));
          return create(RetryCodeRequestResponseSchema, { codeRequest: codeRequestToProto(row) });
        },
      });
    },

    async listSentSms(req) {
      if (deps.sms.kind !== "sink") {
        throw failedPrecondition("SMS_SINK_DISABLED", "messages go through the SMS gateway; the service keeps no copies");
      }
      const limit = pageSize(req.pageSize);
      const [phoneNumber, badPhone] = phoneViolation(req.phoneNumber, false);
      throwIf([badPhone]);
      const filters = { phoneNumber, codeRequestId: req.codeRequestId || undefined };
      const beforeId = decodePageToken<string>(req.pageToken, filters);
      const rows = await listSentSms(db, filters, { beforeId, limit: limit + 1 });
      const { items, next } = page(rows, limit, filters, (last) => last.id);
      return {
        sentSms: items.map((s) =>
          create(SentSmsSchema, { id: s.id, phoneNumber: s.phoneNumber, body: s.body, codeRequestId: s.codeRequestId, sendTime: timestampFromDate(s.sentAt) }),
        ),
        nextPageToken: next,
      };
    },
  };
}

export function providerRoutes(deps: ProviderHandlerDeps) {
  const impl = createProviderHandlers(deps);
  return (router: ConnectRouter) => router.service(ProviderService, impl);
}
