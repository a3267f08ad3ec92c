// VoucherService: protocol in, use case, protocol out. Access policies (admin, service,
// authenticated) are declared in voucher.proto and enforced by the shared interceptor
// before any of these run; what is left here is "a customer acts only for themselves".
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  BookState as BookStateEnum,
  GenerationJobState,
  GenerationTrigger,
  InvalidVoucherReason,
  RedemptionState,
  VoucherService,
  VoucherState as VoucherStateEnum,
  type PurchasedCode as PurchasedCodeMessage,
  AssignVoucherRequestSchema,
  AssignVoucherResponseSchema,
  CreateBookRequestSchema,
  CreateBookResponseSchema,
  GenerateCodesRequestSchema,
  GenerateCodesResponseSchema,
  ImportCodesRequestSchema,
  ImportCodesResponseSchema,
  RedeemVoucherRequestSchema,
  RedeemVoucherResponseSchema,
  ReserveVoucherRequestSchema,
  ReserveVoucherResponseSchema,
  RollbackRedemptionRequestSchema,
  RollbackRedemptionResponseSchema,
} from "../../gen/vouch/voucher/v1/voucher_pb.js";
import type { Money as MoneyMessage } from "../../gen/vouch/type/v1/money_pb.js";
import type { Discount as DiscountMessage } from "../../gen/vouch/type/v1/discount_pb.js";
import { requireCaller } from "../kit/context.js";
import { invalidArgument } from "../kit/errors.js";
import type { Books } from "./books.js";
import { IMPORTABLE_CODE, normaliseCode } from "./domain/pattern.js";
import { expireTime, leaseLive, voucherState, type Book, type BookSettings, type BookState, type Discount, type Money, type Unusable, type Voucher, type VoucherState } from "./domain/model.js";
import * as input from "./input.js";
import { fingerprintRequest, type Idempotency, type OnceOutcome as Outcome } from "../kit/idempotency.js";
import { decodePageToken, page, pageSize } from "../kit/paging.js";
import { E164, type Purchases } from "./purchased.js";
import type { Job } from "./store/jobs.js";
import type { PurchasedCode } from "./store/purchased.js";
import type { JobStateValue } from "./store/schema.js";
import type { RedemptionRow } from "./store/vouchers.js";
import type { Actor, Reserved, Vouchers } from "./vouchers.js";

export interface VoucherRoutesDeps {
  books: Books;
  vouchers: Vouchers;
  purchases: Purchases;
}

// ── domain → protocol ───────────────────────────────────────────────────────────────────

const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);
const moneyOut = (m: Money | null | undefined): MoneyMessage | undefined => (m ? ({ minorUnits: m.minor, currencyCode: m.currency } as MoneyMessage) : undefined);

const BOOK_STATE: Record<BookState, BookStateEnum> = {
  draft: BookStateEnum.DRAFT,
  active: BookStateEnum.ACTIVE,
  paused: BookStateEnum.PAUSED,
  archived: BookStateEnum.ARCHIVED,
};
const VOUCHER_STATE: Record<VoucherState, VoucherStateEnum> = {
  free: VoucherStateEnum.FREE,
  assigned: VoucherStateEnum.ASSIGNED,
  reserved: VoucherStateEnum.RESERVED,
  redeemed: VoucherStateEnum.REDEEMED,
  expired: VoucherStateEnum.EXPIRED,
};
const JOB_STATE: Record<JobStateValue, GenerationJobState> = {
  queued: GenerationJobState.QUEUED,
  running: GenerationJobState.RUNNING,
  succeeded: GenerationJobState.SUCCEEDED,
  failed: GenerationJobState.FAILED,
};
const TRIGGER: Record<Job["trigger"], GenerationTrigger> = {
  book_created: GenerationTrigger.BOOK_CREATED,
  manual: GenerationTrigger.MANUAL,
  auto_top_up: GenerationTrigger.AUTO_TOP_UP,
};
const INVALID_REASON: Record<Unusable, InvalidVoucherReason> = {
  UNKNOWN_CODE: InvalidVoucherReason.UNKNOWN_CODE,
  NOT_OWNER: InvalidVoucherReason.NOT_OWNER,
  BOOK_NOT_ACTIVE: InvalidVoucherReason.BOOK_NOT_ACTIVE,
  NOT_STARTED: InvalidVoucherReason.NOT_STARTED,
  EXPIRED: InvalidVoucherReason.EXPIRED,
  ALREADY_REDEEMED: InvalidVoucherReason.ALREADY_REDEEMED,
  RESERVED_BY_OTHER: InvalidVoucherReason.RESERVED_BY_OTHER,
  USER_LIMIT_REACHED: InvalidVoucherReason.USER_LIMIT_REACHED,
  CURRENCY_MISMATCH: InvalidVoucherReason.CURRENCY_MISMATCH,
  MINIMUM_NOT_MET: InvalidVoucherReason.MINIMUM_NOT_MET,
  RESERVATION_INVALID: InvalidVoucherReason.RESERVATION_INVALID,
  RESERVATION_STALE: InvalidVoucherReason.RESERVATION_STALE,
};
const reverse = <K extends string, V>(m: Record<K, V>) => new Map<V, K>(Object.entries(m).map(([k, v]) => [v as V, k as K]));
const BOOK_STATE_IN = reverse(BOOK_STATE);
const VOUCHER_STATE_IN = reverse(VOUCHER_STATE);
const JOB_STATE_IN = reverse(JOB_STATE);

function discountOut(d: Discount): DiscountMessage {
  return (
    d.kind === "percent"
      ? { kind: { case: "percentOff", value: { basisPoints: d.basisPoints, maxAmount: moneyOut(d.cap) } } }
      : { kind: { case: "amountOff", value: moneyOut(d.amount) } }
  ) as DiscountMessage;
}

export function bookOut(b: Book): MessageInitShape<typeof import("../../gen/vouch/voucher/v1/voucher_pb.js").BookSchema> {
  return {
    id: b.id,
    name: b.name,
    description: b.description,
    discount: discountOut(b.discount),
    minimumOrderAmount: moneyOut(b.minimumOrder),
    startTime: ts(b.startAt),
    endTime: ts(b.endAt),
    codeValidity: b.codeValidityMs === null ? undefined : durationFromMs(b.codeValidityMs),
    codePattern: b.codePattern,
    usesPerCode: b.usesPerCode,
    maxCodesPerUser: b.maxCodesPerUser,
    maxRedemptionsPerUser: b.maxRedemptionsPerUser,
    autoTopUpThreshold: b.autoTopUpThreshold,
    autoTopUpBatchSize: b.autoTopUpBatchSize,
    state: BOOK_STATE[b.state],
    codeCount: b.generatedCount + b.importedCount,
    createTime: ts(b.createdAt),
    updateTime: ts(b.updatedAt),
  };
}

export function voucherOut(v: Voucher, now: Date = new Date()): MessageInitShape<typeof import("../../gen/vouch/voucher/v1/voucher_pb.js").VoucherSchema> {
  const state = voucherState(v, now);
  return {
    id: v.id,
    bookId: v.book.id,
    bookName: v.book.name,
    code: v.code,
    state: VOUCHER_STATE[state],
    ownerUserId: v.ownerUserId ?? "",
    grantId: v.grantId ?? "",
    discount: discountOut(v.book.discount),
    minimumOrderAmount: moneyOut(v.book.minimumOrder),
    startTime: ts(v.book.startAt),
    expireTime: ts(expireTime(v)),
    maxUses: v.book.usesPerCode,
    useCount: v.useCount,
    assignTime: ts(v.assignedAt),
    reservationExpireTime: state === "reserved" && leaseLive(v, now) ? ts(v.leaseExpiresAt) : undefined,
    lastRedeemTime: ts(v.lastRedeemedAt),
    createTime: ts(v.createdAt),
  };
}

function jobOut(j: Job): MessageInitShape<typeof import("../../gen/vouch/voucher/v1/voucher_pb.js").GenerationJobSchema> {
  return {
    id: j.id,
    bookId: j.bookId,
    trigger: TRIGGER[j.trigger],
    state: JOB_STATE[j.state],
    requestedCount: j.requestedCount,
    generatedCount: j.generatedCount,
    collisionCount: j.collisionCount,
    attemptCount: j.attemptCount,
    failureMessage: j.state === "failed" ? j.failureMessage : "",
    createTime: ts(j.createdAt),
    startTime: ts(j.startedAt),
    updateTime: ts(j.updatedAt),
    finishTime: ts(j.finishedAt),
  };
}

function redemptionOut(r: RedemptionRow): MessageInitShape<typeof import("../../gen/vouch/voucher/v1/voucher_pb.js").RedemptionSchema> {
  return {
    id: r.id,
    voucherId: r.codeId,
    code: r.code,
    bookId: r.bookId,
    userId: r.userId,
    orderReference: r.orderReference,
    orderAmount: moneyOut(r.order),
    discountAmount: moneyOut(r.discount),
    state: r.state === "redeemed" ? RedemptionState.REDEEMED : RedemptionState.ROLLED_BACK,
    redeemTime: ts(r.redeemedAt),
    rollbackTime: ts(r.rolledBackAt),
    rollbackReason: r.rollbackReason ?? "",
  };
}

function purchasedOut(p: PurchasedCode): MessageInitShape<typeof import("../../gen/vouch/voucher/v1/voucher_pb.js").PurchasedCodeSchema> {
  return {
    id: p.id,
    codeRequestId: p.codeRequestId,
    userId: p.userId,
    phoneNumber: p.phoneNumber,
    code: p.code,
    channel: p.channel,
    providerStatus: p.providerStatus,
    receiveTime: ts(p.receiveTime),
    createTime: ts(p.createdAt),
  };
}

// ── request ids ─────────────────────────────────────────────────────────────────────────

function actorOf(ctx: HandlerContext): Actor {
  const caller = requireCaller(ctx);
  return { subject: caller.subject, privileged: caller.roles.some((r) => r === "ADMIN" || r === "SERVICE"), phoneNumber: caller.phoneNumber };
}

/** The request id of a retryable mutation: keyed per caller, fingerprinted by the whole request. */
function idempotency<R, I extends DescMessage, O extends DescMessage>(
  ctx: HandlerContext,
  inDesc: I,
  req: MessageShape<I>,
  requestId: string,
  outDesc: O,
  toResponse: (r: R) => MessageInitShape<O>,
): Idempotency<R> | undefined {
  if (!requestId) return undefined;
  return {
    key: { operation: inDesc.typeName, requestId, caller: requireCaller(ctx).subject, fingerprint: fingerprintRequest(inDesc, req) },
    encode: (r) => toBinary(outDesc, create(outDesc, toResponse(r))),
  };
}

/** The response: the stored bytes when there are any (replays are byte-identical), else built from the result. */
function respond<R, O extends DescMessage>(outcome: Outcome<R>, outDesc: O, toResponse: (r: R) => MessageInitShape<O>): MessageShape<O> {
  if ("replay" in outcome) return fromBinary(outDesc, outcome.replay);
  if (outcome.encoded) return fromBinary(outDesc, outcome.encoded);
  return create(outDesc, toResponse(outcome.result));
}

// ── the service ─────────────────────────────────────────────────────────────────────────

const RESERVATION_DEFAULT_MS = 5 * 60_000;
const RESERVATION_MIN_MS = 10_000;
const RESERVATION_MAX_MS = 24 * 3600_000;

export function createVoucherHandlers({ books, vouchers, purchases }: VoucherRoutesDeps): ServiceImpl<typeof VoucherService> {
  const createBookResponse = (r: { book: Book; job?: Job }) => ({ book: bookOut(r.book), generationJob: r.job && jobOut(r.job) });
  const voucherResponse = (v: Voucher) => ({ voucher: voucherOut(v) });
  const redemptionResponse = (r: RedemptionRow) => ({ redemption: redemptionOut(r) });
  const reservedResponse = (r: Reserved) => ({
    reservation: {
      reservationToken: r.token,
      fencingToken: r.reservation.fence,
      voucherId: r.voucher.id,
      code: r.voucher.code,
      userId: r.reservation.userId,
      createTime: ts(r.reservation.createdAt),
      expireTime: ts(r.reservation.expiresAt),
    },
    discountAmount: moneyOut(r.discount),
  });

  const orderAmount = (v: input.Violations, field: string, m: MoneyMessage | undefined, required: boolean) => {
    if (!m && required) v.add(field, "REQUIRED", "is required");
    return input.money(v, field, m, "nonNegative");
  };

  return {
    async createBook(req, ctx) {
      const settings = input.validated((v) => {
        if (!req.book) v.add("book", "REQUIRED", "is required");
        const s = input.bookSettings(v, "book.", req.book) as BookSettings;
        if (!(req.initialCodeCount >= 0 && req.initialCodeCount <= input.MAX_GENERATE)) v.add("initial_code_count", "COUNT_INVALID", "must be 0 to 10,000,000");
        if (req.initialCodeCount > 0 && !s.codePattern) v.add("book.code_pattern", "PATTERN_REQUIRED", "is required to generate codes");
        input.requestId(v, req.requestId);
        if (s.discount) input.checkBook(v, "book.", s);
        return s;
      });
      const idem = idempotency(ctx, CreateBookRequestSchema, req, req.requestId, CreateBookResponseSchema, createBookResponse);
      return respond(await books.create(settings, req.initialCodeCount, idem), CreateBookResponseSchema, createBookResponse);
    },

    async getBook(req) {
      input.validated((v) => input.requiredId(v, "book_id", req.bookId));
      return { book: bookOut(await books.get(req.bookId)) };
    },

    async listBooks(req) {
      const limit = pageSize(req.pageSize);
      const filters = { state: req.state };
      const state = BOOK_STATE_IN.get(req.state);
      const before = decodePageToken<string>(req.pageToken, filters);
      const p = page(await books.list(state, before, limit + 1), limit, filters, (b) => b.id);
      return { books: p.items.map(bookOut), nextPageToken: p.next };
    },

    async updateBook(req) {
      const paths = req.updateMask?.paths ?? [];
      const { id, patch } = input.validated((v) => {
        const id = input.requiredId(v, "book.id", req.book?.id ?? "");
        if (paths.length === 0) v.add("update_mask", "REQUIRED", "name at least one field to update");
        for (const p of paths) if (!input.UPDATABLE_PATHS.has(p)) v.add("update_mask", "PATH_INVALID", `"${p}" cannot be updated`);
        return { id, patch: input.bookSettings(v, "book.", req.book, new Set(paths)) };
      });
      const book = await books.update(id, paths, patch, (merged) => input.validated((v) => input.checkBook(v, "book.", merged)));
      return { book: bookOut(book) };
    },

    async activateBook(req) {
      input.validated((v) => input.requiredId(v, "book_id", req.bookId));
      return { book: bookOut(await books.transition(req.bookId, "active")) };
    },

    async pauseBook(req) {
      input.validated((v) => input.requiredId(v, "book_id", req.bookId));
      return { book: bookOut(await books.transition(req.bookId, "paused")) };
    },

    async archiveBook(req) {
      input.validated((v) => input.requiredId(v, "book_id", req.bookId));
      return { book: bookOut(await books.transition(req.bookId, "archived")) };
    },

    async getBookStats(req) {
      input.validated((v) => input.requiredId(v, "book_id", req.bookId));
      const s = await books.stats(req.bookId);
      const total = BigInt(s.free + s.assigned + s.reserved + s.redeemed + s.expired);
      return {
        stats: {
          bookId: s.bookId,
          totalCount: total,
          generatedCount: s.generated,
          importedCount: s.imported,
          freeCount: BigInt(s.free),
          assignedCount: BigInt(s.assigned),
          reservedCount: BigInt(s.reserved),
          redeemedCount: BigInt(s.redeemed),
          expiredCount: BigInt(s.expired),
          redemptionCount: BigInt(s.redemptions),
          rolledBackCount: BigInt(s.rolledBack),
          computeTime: ts(s.computedAt),
        },
      };
    },

    async getRedemptionTimeline(req) {
      const { from, to, width } = input.validated((v) => {
        if (!req.startTime) v.add("start_time", "REQUIRED", "is required");
        const from = input.date(req.startTime) ?? new Date(0);
        const to = input.date(req.endTime) ?? undefined;
        const width = req.bucketWidth ? durationMs(req.bucketWidth) : 3600_000;
        if (!(width >= 60_000)) v.add("bucket_width", "BUCKET_TOO_SHORT", "must be at least one minute");
        const span = (to ?? new Date()).getTime() - from.getTime();
        if (to && span <= 0) v.add("end_time", "END_BEFORE_START", "must be after start_time");
        if (width >= 60_000 && span / width > 1000) v.add("bucket_width", "TOO_MANY_BUCKETS", "the period may span at most 1000 buckets");
        return { from, to, width };
      });
      const buckets = await books.timeline(req.bookId || undefined, from, to, width);
      return { buckets: buckets.map((b) => ({ startTime: ts(b.start), redeemedCount: BigInt(b.redeemed), rolledBackCount: BigInt(b.rolledBack) })) };
    },

    async previewPattern(req) {
      input.validated((v) => {
        if (!(req.codeCount >= 0 && req.codeCount <= input.MAX_GENERATE)) v.add("code_count", "COUNT_INVALID", "must be 0 to 10,000,000");
        if (!(req.sampleCount >= 0 && req.sampleCount <= 50)) v.add("sample_count", "COUNT_INVALID", "must be 0 to 50");
      });
      const p = await books.preview(req.codePattern, req.codeCount, req.sampleCount || 5, req.bookId || undefined);
      return {
        samples: p.samples,
        spaceSize: p.spaceSize,
        entropyBits: p.entropyBits,
        fillRatio: p.fillRatio,
        maxFillRatio: p.maxFillRatio,
        expectedCollisions: p.expectedCollisions,
        acceptable: p.acceptable,
        explanation: p.explanation,
      };
    },

    async generateCodes(req, ctx) {
      input.validated((v) => {
        input.requiredId(v, "book_id", req.bookId);
        if (!(req.codeCount >= 1 && req.codeCount <= input.MAX_GENERATE)) v.add("code_count", "COUNT_INVALID", "must be 1 to 10,000,000");
        input.requestId(v, req.requestId);
      });
      const toResponse = (j: Job) => ({ generationJob: jobOut(j) });
      const idem = idempotency(ctx, GenerateCodesRequestSchema, req, req.requestId, GenerateCodesResponseSchema, toResponse);
      return respond(await books.generate(req.bookId, req.codeCount, idem), GenerateCodesResponseSchema, toResponse);
    },

    async getGenerationJob(req) {
      input.validated((v) => input.requiredId(v, "generation_job_id", req.generationJobId));
      return { generationJob: jobOut(await books.job(req.generationJobId)) };
    },

    async listGenerationJobs(req) {
      const limit = pageSize(req.pageSize);
      const filters = { bookId: req.bookId, state: req.state };
      const before = decodePageToken<string>(req.pageToken, filters);
      const rows = await books.jobs({ bookId: req.bookId || undefined, state: JOB_STATE_IN.get(req.state) }, before, limit + 1);
      const p = page(rows, limit, filters, (j) => j.id);
      return { generationJobs: p.items.map(jobOut), nextPageToken: p.next };
    },

    async *watchGenerationJob(req, ctx) {
      input.validated((v) => input.requiredId(v, "generation_job_id", req.generationJobId));
      for await (const job of books.watch(req.generationJobId, ctx.signal)) yield { generationJob: jobOut(job) };
    },

    async resumeGenerationJob(req) {
      input.validated((v) => input.requiredId(v, "generation_job_id", req.generationJobId));
      return { generationJob: jobOut(await books.resume(req.generationJobId)) };
    },

    async importCodes(req, ctx) {
      const codes = input.validated((v) => {
        input.requiredId(v, "book_id", req.bookId);
        input.requestId(v, req.requestId);
        if (req.codes.length < 1 || req.codes.length > 10_000) v.add("codes", "COUNT_INVALID", "must hold 1 to 10,000 codes");
        const normalised = req.codes.map(normaliseCode);
        normalised.forEach((c, i) => {
          if (!IMPORTABLE_CODE.test(c)) v.add(`codes[${i}]`, "CODE_MALFORMED", "must be 4 to 64 of A-Z, 0-9, - and _");
        });
        return normalised;
      });
      const toResponse = (r: { imported: number; duplicates: string[] }) => ({ importedCount: r.imported, duplicateCodes: r.duplicates });
      const idem = idempotency(ctx, ImportCodesRequestSchema, req, req.requestId, ImportCodesResponseSchema, toResponse);
      return respond(await books.import(req.bookId, codes, idem), ImportCodesResponseSchema, toResponse);
    },

    async *exportCodes(req) {
      input.validated((v) => input.requiredId(v, "book_id", req.bookId));
      for await (const chunk of books.exportCsv(req.bookId, VOUCHER_STATE_IN.get(req.state))) {
        yield { csv: Buffer.from(chunk.csv, "utf8"), rowCount: chunk.rows };
      }
    },

    async listVouchers(req) {
      const limit = pageSize(req.pageSize);
      const prefix = normaliseCode(req.codePrefix);
      input.validated((v) => {
        if (prefix && prefix.length < 3) v.add("code_prefix", "PREFIX_TOO_SHORT", "must be at least 3 characters when set");
      });
      const filters = { bookId: req.bookId, state: req.state, owner: req.ownerUserId, prefix };
      const after = decodePageToken<string>(req.pageToken, filters);
      const rows = await vouchers.list(
        { bookId: req.bookId || undefined, state: VOUCHER_STATE_IN.get(req.state), ownerUserId: req.ownerUserId || undefined, codePrefix: prefix || undefined },
        after,
        limit + 1,
      );
      const p = page(rows, limit, filters, (r) => r.voucher.code);
      return { vouchers: p.items.map((r) => voucherOut(r.voucher, r.now)), nextPageToken: p.next };
    },

    async getVoucher(req, ctx) {
      input.validated((v) => input.requiredId(v, "voucher_id", req.voucherId));
      return { voucher: voucherOut(await vouchers.get(actorOf(ctx), req.voucherId)) };
    },

    async batchGetVouchers(req, ctx) {
      input.validated((v) => {
        if (req.voucherIds.length < 1 || req.voucherIds.length > 100) v.add("voucher_ids", "COUNT_INVALID", "must hold 1 to 100 ids");
      });
      return { vouchers: (await vouchers.batchGet(actorOf(ctx), req.voucherIds)).map((v) => voucherOut(v)) };
    },

    async listMyVouchers(req, ctx) {
      const limit = pageSize(req.pageSize);
      input.validated((v) => {
        if (req.state === VoucherStateEnum.FREE) v.add("state", "STATE_INVALID", "a free voucher belongs to nobody: use ASSIGNED, RESERVED, REDEEMED or EXPIRED");
      });
      const filters = { state: req.state };
      const after = decodePageToken<{ t: string; id: string }>(req.pageToken, filters);
      const rows = await vouchers.listOwned(requireCaller(ctx).subject, VOUCHER_STATE_IN.get(req.state), after && { assignedAt: new Date(after.t), id: after.id }, limit + 1);
      const p = page(rows, limit, filters, (r) => ({ t: r.voucher.assignedAt!.toISOString(), id: r.voucher.id }));
      return { vouchers: p.items.map((r) => voucherOut(r.voucher, r.now)), nextPageToken: p.next };
    },

    async getVoucherQrCode(req, ctx) {
      input.validated((v) => {
        input.requiredId(v, "voucher_id", req.voucherId);
        if (req.sizePx !== 0 && (req.sizePx < 64 || req.sizePx > 1024)) v.add("size_px", "SIZE_INVALID", "must be 64 to 1024 (0 means 256)");
      });
      const voucher = await vouchers.get(actorOf(ctx), req.voucherId);
      const qr = await vouchers.qr(voucher, req.sizePx || 256);
      return { png: qr.png, svg: qr.svg };
    },

    async assignVoucher(req, ctx) {
      const code = input.validated((v) => {
        input.requiredId(v, "book_id", req.bookId);
        input.requiredId(v, "user_id", req.userId);
        input.requestId(v, req.requestId);
        return input.code(v, "code", req.code, false);
      });
      const idem = idempotency(ctx, AssignVoucherRequestSchema, req, req.requestId, AssignVoucherResponseSchema, voucherResponse);
      return respond(await vouchers.assign(req.bookId, req.userId, code || undefined, idem), AssignVoucherResponseSchema, voucherResponse);
    },

    async issueVoucher(req) {
      input.validated((v) => {
        input.requiredId(v, "grant_id", req.grantId);
        input.requiredId(v, "book_id", req.bookId);
        input.requiredId(v, "user_id", req.userId);
      });
      return { voucher: voucherOut(await vouchers.issue(req.grantId, req.bookId, req.userId)) };
    },

    async validateVoucher(req, ctx) {
      const { code, order } = input.validated((v) => ({
        code: input.code(v, "code", req.code),
        order: orderAmount(v, "order_amount", req.orderAmount, false),
        user: input.optionalUser(v, "user_id", req.userId),
        token: input.optionalReservationToken(v, req.reservationToken),
      }));
      const userId = vouchers.actingFor(actorOf(ctx), req.userId);
      const result = await vouchers.validate(code, userId, order, req.reservationToken || undefined);
      if (result.unusable) return { valid: false, reason: INVALID_REASON[result.unusable] };
      return {
        valid: true,
        voucher: voucherOut(result.voucher!),
        discountAmount: moneyOut(result.discount),
        amountAfterDiscount: order && result.discount ? moneyOut({ minor: order.minor - result.discount.minor, currency: order.currency }) : undefined,
      };
    },

    async reserveVoucher(req, ctx) {
      const { code, order, ttlMs } = input.validated((v) => {
        const ttlMs = req.ttl ? durationMs(req.ttl) : RESERVATION_DEFAULT_MS;
        if (!(ttlMs >= RESERVATION_MIN_MS && ttlMs <= RESERVATION_MAX_MS)) v.add("ttl", "TTL_INVALID", "must be from 10 seconds to 24 hours");
        input.requestId(v, req.requestId);
        input.optionalUser(v, "user_id", req.userId);
        return { code: input.code(v, "code", req.code), order: orderAmount(v, "order_amount", req.orderAmount, false), ttlMs };
      });
      const userId = vouchers.actingFor(actorOf(ctx), req.userId);
      const idem = idempotency(ctx, ReserveVoucherRequestSchema, req, req.requestId, ReserveVoucherResponseSchema, reservedResponse);
      return respond(await vouchers.reserve(code, userId, order, ttlMs, idem), ReserveVoucherResponseSchema, reservedResponse);
    },

    async releaseReservation(req, ctx) {
      input.validated((v) => input.requiredId(v, "reservation_token", req.reservationToken));
      await vouchers.release(actorOf(ctx), req.reservationToken);
      return {};
    },

    async redeemVoucher(req, ctx) {
      const fields = input.validated((v) => {
        input.requestId(v, req.requestId, true);
        input.optionalUser(v, "user_id", req.userId);
        if (req.orderReference.length < 1 || req.orderReference.length > 128) v.add("order_reference", "ORDER_REFERENCE_INVALID", "must be 1 to 128 characters");
        input.optionalReservationToken(v, req.reservationToken);
        return { code: input.code(v, "code", req.code), order: orderAmount(v, "order_amount", req.orderAmount, true)! };
      });
      const userId = vouchers.actingFor(actorOf(ctx), req.userId);
      const idem = idempotency(ctx, RedeemVoucherRequestSchema, req, req.requestId, RedeemVoucherResponseSchema, redemptionResponse)!;
      const outcome = await vouchers.redeem(
        { code: fields.code, userId, orderReference: req.orderReference, order: fields.order, reservationToken: req.reservationToken || undefined },
        idem,
      );
      return respond(outcome, RedeemVoucherResponseSchema, redemptionResponse);
    },

    async rollbackRedemption(req, ctx) {
      input.validated((v) => {
        input.requiredId(v, "redemption_id", req.redemptionId);
        if (req.reason.trim().length < 1 || req.reason.length > 500) v.add("reason", "REASON_INVALID", "must be 1 to 500 characters");
        input.requestId(v, req.requestId);
      });
      const idem = idempotency(ctx, RollbackRedemptionRequestSchema, req, req.requestId, RollbackRedemptionResponseSchema, redemptionResponse);
      return respond(await vouchers.rollback(req.redemptionId, req.reason, idem), RollbackRedemptionResponseSchema, redemptionResponse);
    },

    async getRedemption(req) {
      input.validated((v) => input.requiredId(v, "redemption_id", req.redemptionId));
      return { redemption: redemptionOut(await vouchers.redemption(req.redemptionId)) };
    },

    async listRedemptions(req) {
      const limit = pageSize(req.pageSize);
      const code = normaliseCode(req.code);
      const filters = { b: req.bookId, u: req.userId, c: code, o: req.orderReference, s: req.state, f: req.startTime && timestampDate(req.startTime).toISOString(), t: req.endTime && timestampDate(req.endTime).toISOString() };
      const before = decodePageToken<string>(req.pageToken, filters);
      const rows = await vouchers.redemptions(
        {
          bookId: req.bookId || undefined,
          userId: req.userId || undefined,
          code: code || undefined,
          orderReference: req.orderReference || undefined,
          state: req.state === RedemptionState.REDEEMED ? "redeemed" : req.state === RedemptionState.ROLLED_BACK ? "rolled_back" : undefined,
          from: input.date(req.startTime) ?? undefined,
          to: input.date(req.endTime) ?? undefined,
        },
        before,
        limit + 1,
      );
      const p = page(rows, limit, filters, (r) => r.id);
      return { redemptions: p.items.map(redemptionOut), nextPageToken: p.next };
    },

    async storePurchasedCode(req) {
      const p = req.purchasedCode;
      const purchase = input.validated((v) => {
        if (!p) {
          v.add("purchased_code", "REQUIRED", "is required");
          return undefined;
        }
        input.requiredId(v, "purchased_code.code_request_id", p.codeRequestId);
        input.requiredId(v, "purchased_code.user_id", p.userId);
        if (!E164.test(p.phoneNumber)) v.add("purchased_code.phone_number", "PHONE_NUMBER_INVALID", "must be an E.164 number, e.g. +84901234567");
        if (p.code.length < 1 || p.code.length > 256) v.add("purchased_code.code", "CODE_MALFORMED", "must be 1 to 256 characters");
        if (!p.channel) v.add("purchased_code.channel", "REQUIRED", "is required");
        if (!p.providerStatus) v.add("purchased_code.provider_status", "REQUIRED", "is required");
        if (!p.receiveTime) v.add("purchased_code.receive_time", "REQUIRED", "is required");
        return p;
      })!;
      const stored = await purchases.store(purchaseInput(purchase));
      return { purchasedCode: purchasedOut(stored) };
    },

    async getPurchasedCode(req, ctx) {
      input.validated((v) => input.requiredId(v, "purchased_code_id", req.purchasedCodeId));
      return { purchasedCode: purchasedOut(await purchases.get(actorOf(ctx), req.purchasedCodeId)) };
    },

    async listPurchasedCodes(req, ctx) {
      const limit = pageSize(req.pageSize);
      input.validated((v) => {
        if (!E164.test(req.phoneNumber)) v.add("phone_number", "PHONE_NUMBER_INVALID", "must be an E.164 number, e.g. +84901234567");
      });
      const filters = { phone: req.phoneNumber };
      const before = decodePageToken<string>(req.pageToken, filters);
      const p = page(await purchases.list(actorOf(ctx), req.phoneNumber, before, limit + 1), limit, filters, (r) => r.id);
      return { purchasedCodes: p.items.map(purchasedOut), nextPageToken: p.next };
    },
  };
}

/** A purchased code from the contract (rpc or event) → the store's input. */
export function purchaseInput(p: Pick<PurchasedCodeMessage, "codeRequestId" | "userId" | "phoneNumber" | "code" | "channel" | "providerStatus" | "receiveTime">) {
  return {
    codeRequestId: p.codeRequestId,
    userId: p.userId,
    phoneNumber: p.phoneNumber,
    code: p.code,
    channel: p.channel,
    providerStatus: p.providerStatus,
    receiveTime: p.receiveTime ? timestampDate(p.receiveTime) : new Date(),
  };
}

export function voucherRoutes(deps: VoucherRoutesDeps) {
  const impl = createVoucherHandlers(deps);
  return (router: ConnectRouter) => router.service(VoucherService, impl);
}
