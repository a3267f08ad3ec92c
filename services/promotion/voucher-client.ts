// The voucher service as promotion uses it: over gRPC with a SERVICE token from auth
// (so ACCESS_SERVICE rpcs such as IssueVoucher pass, and Validate/Reserve/Redeem may act
// for a customer through `user_id`). Voucher's failures are translated here, once:
// unreachable or overloaded → UNAVAILABLE / TEMPORARILY_UNAVAILABLE (the caller retries
// with the same request id); a refusal keeps its voucher reason for the caller to map.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createServiceTransport } from "../kit/grpc-transport.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { Discount as DiscountMessage } from "../../gen/vouch/type/v1/discount_pb.js";
import type { Money as MoneyMessage } from "../../gen/vouch/type/v1/money_pb.js";
import {
  InvalidVoucherReason,
  VoucherService,
  type BookSchema,
  type Voucher as VoucherMessage,
} from "../../gen/vouch/voucher/v1/voucher_pb.js";
import { VouchError } from "../kit/errors.js";
import { createServiceTokenSource, serviceCredentials } from "../kit/service-token.js";
import type { Discount, Money } from "./domain/model.js";

export type VoucherClient = Client<typeof VoucherService>;

export interface VoucherGatewayOptions {
  voucherUrl: string;
  authUrl: string;
  timeoutMs: number;
  env?: Record<string, string | undefined>;
}

const TRANSIENT = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Aborted, Code.Unknown, Code.Internal, Code.Canceled, Code.Unauthenticated]);

/** The voucher service's ErrorInfo reason, when it refused with one. */
export function voucherReason(err: unknown): string | undefined {
  return err instanceof ConnectError ? err.findDetails(ErrorInfoSchema)[0]?.reason : undefined;
}

/**
 * True when the voucher service (or the way to it, or our service token) failed rather
 * than refused: the same call will work later. UNAUTHENTICATED counts: it means our
 * service token could not be had or was not accepted yet, an outage of auth.
 */
export function voucherUnreachable(err: unknown): boolean {
  if (err instanceof ConnectError) return TRANSIENT.has(err.code);
  // The token source failing (auth down) surfaces as a plain error or a ConnectError above.
  return !(err instanceof VouchError);
}

/** Rethrows a voucher failure as what promotion's caller should see for it. */
export function unavailableFromVoucher(err: unknown): never {
  if (voucherUnreachable(err)) {
    throw new VouchError(Code.Unavailable, "TEMPORARILY_UNAVAILABLE", "the voucher service cannot be reached right now; retry with the same request_id", {
      retryAfterMs: 1_000,
      cause: err,
    });
  }
  throw err;
}

export const moneyOut = (m: Money | undefined | null): MoneyMessage | undefined =>
  m ? ({ $typeName: "vouch.type.v1.Money", minorUnits: m.minor, currencyCode: m.currency } as MoneyMessage) : undefined;

export const moneyIn = (m: MoneyMessage | undefined): Money | undefined => (m ? { minor: m.minorUnits, currency: m.currencyCode } : undefined);

export function discountOut(d: Discount): MessageInitShape<typeof import("../../gen/vouch/type/v1/discount_pb.js").DiscountSchema> {
  return d.kind === "percent"
    ? { kind: { case: "percentOff", value: { basisPoints: d.basisPoints, maxAmount: moneyOut(d.cap) } } }
    : { kind: { case: "amountOff", value: moneyOut(d.amount)! } };
}

export function discountIn(d: DiscountMessage | undefined): Discount | undefined {
  switch (d?.kind.case) {
    case "percentOff":
      return { kind: "percent", basisPoints: d.kind.value.basisPoints, cap: moneyIn(d.kind.value.maxAmount) };
    case "amountOff":
      return { kind: "amount", amount: moneyIn(d.kind.value)! };
    default:
      return undefined;
  }
}

export interface IssuedVoucher {
  voucherId: string;
  code: string;
}

export type Validation =
  | { valid: true; voucher: VoucherMessage; discount: Money | undefined }
  | { valid: false; reason: string };

export interface Reservation {
  token: string;
  voucherId: string;
  discount: Money | undefined;
}

export interface VoucherGateway {
  client: VoucherClient;
  createBook(book: MessageInitShape<typeof BookSchema>, initialCodeCount: number, requestId: string): Promise<string>;
  activateBook(bookId: string): Promise<void>;
  updateBook(book: MessageInitShape<typeof BookSchema>, paths: string[]): Promise<void>;
  generateCodes(bookId: string, count: number, requestId: string): Promise<void>;
  issue(grantId: string, bookId: string, userId: string, timeoutMs?: number): Promise<IssuedVoucher>;
  /** The vouchers by id; undefined when the voucher service cannot answer now (reads degrade, never fail). */
  batchGet(ids: string[]): Promise<Map<string, VoucherMessage> | undefined>;
  validate(code: string, userId: string, amount: Money): Promise<Validation>;
  reserve(code: string, userId: string, amount: Money, ttlMs: number, requestId: string): Promise<Reservation>;
  release(token: string): Promise<void>;
  redeem(input: { code: string; userId: string; orderReference: string; amount: Money; reservationToken: string; requestId: string }): Promise<{ redemptionId: string }>;
  rollback(redemptionId: string, reason: string, requestId: string): Promise<void>;
  /** Closes the channels to voucher and auth (on shutdown, after everything that calls them stopped). */
  close(): void;
}

export function createVoucherGateway(opts: VoucherGatewayOptions): VoucherGateway {
  const tokens = createServiceTokenSource({ authUrl: opts.authUrl, ...serviceCredentials("promotion", opts.env) });
  const transport = createServiceTransport({ baseUrl: opts.voucherUrl, interceptors: [tokens.interceptor] });
  const client = createClient(VoucherService, transport);
  const call = { timeoutMs: opts.timeoutMs };

  return {
    client,
    close() {
      transport.close();
      tokens.close();
    },
    async createBook(book, initialCodeCount, requestId) {
      const res = await client.createBook({ book, initialCodeCount, requestId }, call);
      return res.book!.id;
    },
    async activateBook(bookId) {
      await client.activateBook({ bookId }, call);
    },
    async updateBook(book, paths) {
      await client.updateBook({ book, updateMask: { paths } }, call);
    },
    async generateCodes(bookId, codeCount, requestId) {
      await client.generateCodes({ bookId, codeCount, requestId }, call);
    },
    async issue(grantId, bookId, userId, timeoutMs = opts.timeoutMs) {
      const res = await client.issueVoucher({ grantId, bookId, userId }, { timeoutMs });
      return { voucherId: res.voucher!.id, code: res.voucher!.code };
    },
    async batchGet(ids) {
      if (!ids.length) return new Map();
      try {
        const out = new Map<string, VoucherMessage>();
        for (let i = 0; i < ids.length; i += 100) {
          const res = await client.batchGetVouchers({ voucherIds: ids.slice(i, i + 100) }, call);
          for (const v of res.vouchers) out.set(v.id, v);
        }
        return out;
      } catch {
        return undefined;
      }
    },
    async validate(code, userId, amount) {
      const res = await client.validateVoucher({ code, userId, orderAmount: moneyOut(amount) }, call);
      if (!res.valid) return { valid: false, reason: InvalidVoucherReason[res.reason] ?? "UNKNOWN_CODE" };
      return { valid: true, voucher: res.voucher!, discount: moneyIn(res.discountAmount) };
    },
    async reserve(code, userId, amount, ttlMs, requestId) {
      const res = await client.reserveVoucher({ code, userId, orderAmount: moneyOut(amount), ttl: durationFromMs(ttlMs), requestId }, call);
      return { token: res.reservation!.reservationToken, voucherId: res.reservation!.voucherId, discount: moneyIn(res.discountAmount) };
    },
    async release(reservationToken) {
      await client.releaseReservation({ reservationToken }, call);
    },
    async redeem(input) {
      const res = await client.redeemVoucher(
        {
          code: input.code,
          userId: input.userId,
          orderReference: input.orderReference,
          orderAmount: moneyOut(input.amount),
          reservationToken: input.reservationToken,
          requestId: input.requestId,
        },
        call,
      );
      return { redemptionId: res.redemption!.id };
    },
    async rollback(redemptionId, reason, requestId) {
      await client.rollbackRedemption({ redemptionId, reason, requestId }, call);
    },
  };
}
