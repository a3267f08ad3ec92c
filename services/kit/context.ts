// Values a call carries from the runtime to its handler. Typed context keys, never globals.
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Logger } from "./log.js";
import { unauthenticated } from "./errors.js";

/** The verified caller of an rpc, put there by the auth interceptor. */
export interface Caller {
  /** The user id (JWT `sub`), or the service name for service tokens. */
  subject: string;
  roles: readonly string[];
  /** The user's E.164 phone number (JWT `phone_number`), for "owner of this phone" checks. */
  phoneNumber?: string;
  /** JWT `jti`, for audit logs. */
  tokenId: string;
  issuedAt: Date;
  expiresAt: Date;
}

export const callerKey = createContextKey<Caller | undefined>(undefined, { description: "verified caller" });

/** The address of the person behind the call: the socket peer, or the edge's `x-forwarded-for` when trusted. */
export const clientIpKey = createContextKey<string>("", { description: "client ip" });

/** Per-call logger carrying the request id. */
export const loggerKey = createContextKey<Logger | undefined>(undefined, { description: "call logger" });

/** The caller of an rpc whose policy requires a token. Throws if the runtime let an anonymous call through. */
export function requireCaller(ctx: HandlerContext): Caller {
  const caller = ctx.values.get(callerKey);
  if (!caller) throw unauthenticated("TOKEN_MISSING");
  return caller;
}

export const isAdmin = (caller: Caller | undefined) => caller?.roles.includes("ADMIN") ?? false;
