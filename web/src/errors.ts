// Errors as people read them: the service's reason turned into a sentence, field problems
// listed by field, limits with their wait. Never a stack trace.
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";

const BY_REASON: Record<string, string> = {
  INVALID_CREDENTIALS: "Wrong username, email, phone number or password.",
  TOKEN_EXPIRED: "Your session has expired. Please sign in again.",
  TOKEN_REVOKED: "Your session was ended. Please sign in again.",
  TOKEN_MISSING: "Please sign in first.",
  ADMIN_REQUIRED: "Only administrators can do this.",
  RATE_LIMITED: "Too many requests.",
  RPC_NOT_EXPOSED: "This operation is not available from the browser.",
  UPSTREAM_UNAVAILABLE: "The service is temporarily unavailable. Please try again shortly.",
};

export interface ReadableError {
  title: string;
  reason?: string;
  fields: { field: string; description: string }[];
}

export function readableError(err: unknown): ReadableError {
  const ce = ConnectError.from(err);
  const reason = ce.findDetails(ErrorInfoSchema)[0]?.reason;
  const fields = ce.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => ({ field: v.field, description: v.description })) ?? [];
  let title = (reason && BY_REASON[reason]) || ce.rawMessage || Code[ce.code];
  if (ce.code === Code.Unimplemented && !reason) title = "This part of Vouch is not available yet.";
  if (ce.code === Code.Unavailable && !reason) title = "Cannot reach Vouch right now. Check your connection and try again.";
  if (ce.code === Code.Internal) title = "Something went wrong on our side. Please try again.";
  const retry = ce.findDetails(RetryInfoSchema)[0]?.retryDelay;
  if (retry) title += ` Try again in ${Math.max(1, Math.ceil(Number(retry.seconds) + retry.nanos / 1e9))} s.`;
  return { title, reason, fields };
}
