// What browsers may do through the edge, on top of each rpc's own access policy (which the
// edge checks with the same interceptor as every service, and the service checks again).
import type { DescMethod } from "@bufbuild/protobuf";
import type { Interceptor } from "@connectrpc/connect";
import { Access } from "../../gen/vouch/options/v1/options_pb.js";
import { accessOf } from "../kit/auth.js";
import { callerKey } from "../kit/context.js";
import { Code, VouchError, permissionDenied } from "../kit/errors.js";

/**
 * Public rpcs that are still for machines only: a service's client credentials have no
 * business in a browser, and the token they return would pass admin rpcs.
 */
const MACHINE_ONLY = new Set(["vouch.auth.v1.AuthService.IssueServiceToken"]);

/** Why browsers may not call `method` through the edge, or undefined when they may. */
export function hiddenReason(method: DescMethod): string | undefined {
  if (accessOf(method) === Access.SERVICE) return "it is for Vouch services only";
  if (MACHINE_ONLY.has(`${method.parent.typeName}.${method.name}`)) return "it is for Vouch services only";
  if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") {
    // Browsers cannot send request streams over HTTP/1.1 (fetch has no streaming upload there).
    return "browsers cannot stream requests";
  }
  return undefined;
}

/** Refuses hidden rpcs before anything else runs (no token check, no rate limit, no upstream call). */
export function hiddenRpcGuard(): Interceptor {
  return (next) => async (req) => {
    const reason = hiddenReason(req.method);
    if (reason) {
      throw new VouchError(Code.Unimplemented, "RPC_NOT_EXPOSED", `${req.method.parent.typeName}/${req.method.name} is not served by the edge: ${reason}`);
    }
    return next(req);
  };
}

/**
 * Service tokens stay inside the platform: through the edge they would pass every admin rpc
 * (services act for admins), so a leaked one must not work from the internet.
 */
export function refuseServiceTokens(): Interceptor {
  return (next) => async (req) => {
    if (req.contextValues.get(callerKey)?.roles.includes("SERVICE")) {
      throw permissionDenied("SERVICE_TOKEN_REFUSED", "service tokens are not accepted by the edge");
    }
    return next(req);
  };
}
