// One way to fail. Domain code throws `VouchError` (a gRPC code plus a stable reason);
// the error interceptor turns it into a ConnectError carrying google.rpc.ErrorInfo, and
// BadRequest / RetryInfo where they apply. Anything else thrown is a bug: it is logged with
// its cause and reaches the client as a bare INTERNAL with no internals on the wire.
import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../../gen/google/rpc/error_details_pb.js";
import type { Logger } from "./log.js";
import { clip, isWellFormed } from "./text.js";

export { Code };

export interface FieldViolation {
  /** Path of the offending field in the request, e.g. `email` or `discount.percent`. */
  field: string;
  /** What is wrong, for a person. */
  description: string;
  /** Stable UPPER_SNAKE reason for this field, e.g. `EMAIL_INVALID`. */
  reason?: string;
}

export interface VouchErrorOptions {
  metadata?: Record<string, string>;
  violations?: FieldViolation[];
  /** For RESOURCE_EXHAUSTED and UNAVAILABLE: when the caller may try again. */
  retryAfterMs?: number;
  cause?: unknown;
}

/** A failure the caller can understand and act on. `reason` is part of the API: never rename one. */
export class VouchError extends Error {
  constructor(
    readonly code: Code,
    readonly reason: string,
    message: string,
    readonly options: VouchErrorOptions = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "VouchError";
  }
}

export const invalidArgument = (violations: FieldViolation[], message?: string) =>
  new VouchError(
    Code.InvalidArgument,
    "INVALID_ARGUMENT",
    message ?? violations.map((v) => `${v.field}: ${v.description}`).join("; "),
    { violations },
  );

export const notFound = (reason: string, message: string, metadata?: Record<string, string>) =>
  new VouchError(Code.NotFound, reason, message, { metadata });

export const alreadyExists = (reason: string, message: string, metadata?: Record<string, string>) =>
  new VouchError(Code.AlreadyExists, reason, message, { metadata });

export const failedPrecondition = (reason: string, message: string, metadata?: Record<string, string>) =>
  new VouchError(Code.FailedPrecondition, reason, message, { metadata });

export const unauthenticated = (reason: string, message = "authentication required") =>
  new VouchError(Code.Unauthenticated, reason, message);

export const permissionDenied = (reason: string, message = "permission denied") =>
  new VouchError(Code.PermissionDenied, reason, message);

export const resourceExhausted = (reason: string, message: string, retryAfterMs: number) =>
  new VouchError(Code.ResourceExhausted, reason, message, { retryAfterMs });

export const unavailable = (reason: string, message: string, retryAfterMs?: number) =>
  new VouchError(Code.Unavailable, reason, message, { retryAfterMs });

// Bounds on what an error echoes back (messages often quote the input): the message and
// details travel in HTTP/2 headers for gRPC, whose block has a size limit.
const MAX_MESSAGE = 1_000;
const MAX_DETAIL = 300;
const MAX_VIOLATIONS = 20;

/** Postgres SQLSTATE class 22, "data exception": a value the database cannot take (out of range, bad text). */
const DATA_EXCEPTION = /^22[0-9A-Z]{3}$/;

/** Converts anything thrown by a handler into what goes on the wire. */
export function toConnectError(err: unknown, domain: string, log?: Logger): ConnectError {
  if (err instanceof VouchError) return vouchToConnect(err, domain);
  if (err instanceof ConnectError) {
    // Raised by the protocol layer (bad message, deadline, cancel): already safe to send.
    // An INTERNAL one without details came from a bug somewhere below us: log it.
    if (err.code === Code.Internal) log?.error({ err }, "internal error");
    const message = err.rawMessage;
    if (message.length <= MAX_MESSAGE && isWellFormed(message)) return err;
    const clipped = new ConnectError(clip(message, MAX_MESSAGE), err.code, err.metadata, undefined, err.cause);
    clipped.details.push(...err.details);
    return clipped;
  }
  const sqlState = (err as { code?: unknown } | null)?.code;
  if (typeof sqlState === "string" && DATA_EXCEPTION.test(sqlState)) {
    // A request value no check above the database caught (an int64 at its limit overflowing
    // a sum, a timestamp past year 294276): the caller's input, not our bug — but logged,
    // since a validation is missing somewhere.
    log?.warn({ err }, "request value refused by the database");
    return vouchToConnect(new VouchError(Code.InvalidArgument, "VALUE_OUT_OF_RANGE", "a value in the request is out of the range the service can store"), domain);
  }
  log?.error({ err }, "unexpected error in handler");
  return new ConnectError("internal error", Code.Internal, undefined, [
    { desc: ErrorInfoSchema, value: { reason: "INTERNAL", domain } },
  ]);
}

function vouchToConnect(err: VouchError, domain: string): ConnectError {
  const { metadata = {}, violations, retryAfterMs } = err.options;
  const details: ConstructorParameters<typeof ConnectError>[3] = [
    {
      desc: ErrorInfoSchema,
      value: create(ErrorInfoSchema, { reason: err.reason, domain, metadata: Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, clip(v, MAX_DETAIL)])) }),
    },
  ];
  if (violations?.length) {
    details.push({
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: violations.slice(0, MAX_VIOLATIONS).map((v) =>
          create(BadRequest_FieldViolationSchema, { field: clip(v.field, MAX_DETAIL), description: clip(v.description, MAX_DETAIL), reason: v.reason ?? "" }),
        ),
      }),
    });
  }
  if (retryAfterMs !== undefined) {
    details.push({ desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: durationFromMs(retryAfterMs) }) });
  }
  return new ConnectError(clip(err.message, MAX_MESSAGE), err.code, undefined, details);
}

/** Reads the ErrorInfo reason off an error received from a peer service (for tests and clients). */
export function reasonOf(err: unknown): string | undefined {
  if (!(err instanceof ConnectError)) return undefined;
  return err.findDetails(ErrorInfoSchema)[0]?.reason;
}

// SQLSTATE classes and codes that mean "the database could not do it right now", not
// "this request is wrong": connection exceptions, shutdowns, too many connections,
// serialization failures and deadlocks.
const TRANSIENT_SQLSTATE = /^(08...|57P0[123]|53300|40001|40P01)$/;
const TRANSIENT_ERRNO = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN"]);
const TRANSIENT_CODES = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.ResourceExhausted]);

/**
 * True when a failure is about infrastructure (a database restart, a peer service down,
 * a broken connection) and the same work will succeed later: such failures are retried
 * without limit instead of being counted as the work's own fault.
 */
export function isTransient(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof ConnectError) return TRANSIENT_CODES.has(e.code);
    if (e instanceof VouchError) return TRANSIENT_CODES.has(e.code);
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (typeof code === "string" && (TRANSIENT_SQLSTATE.test(code) || TRANSIENT_ERRNO.has(code))) return true;
    if (typeof message === "string" && /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/.test(message)) return true;
  }
  return false;
}
