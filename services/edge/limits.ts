// Per-address and per-user rate limits on every rpc through the edge (GCRA in Redis, shared
// by edge replicas; RESOURCE_EXHAUSTED with RetryInfo). The address limit runs before the
// token is verified, so a flood of forged tokens costs one Redis call each, not a signature
// check; the user limit follows a signed-in caller across addresses.
import type { Interceptor } from "@connectrpc/connect";
import { callerKey, clientIpKey } from "../kit/context.js";
import type { RateLimiter } from "../kit/ratelimit.js";

export function perIpLimit(limiter: RateLimiter): Interceptor {
  return (next) => async (req) => {
    const ip = req.contextValues.get(clientIpKey);
    if (ip) await limiter.enforce(ip, "RATE_LIMITED");
    return next(req);
  };
}

export function perUserLimit(limiter: RateLimiter): Interceptor {
  return (next) => async (req) => {
    const caller = req.contextValues.get(callerKey);
    if (caller) await limiter.enforce(caller.subject, "RATE_LIMITED");
    return next(req);
  };
}
