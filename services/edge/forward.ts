// Generic forwarding: every rpc of a service descriptor becomes a handler that calls the
// same rpc upstream over gRPC. Nothing here knows any rpc by name, so a new rpc in a
// contract is served by the edge once `gen/` is regenerated (except the hidden ones below).
import type { DescMethodServerStreaming, DescMethodUnary, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type Transport } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { clientIpKey } from "../kit/context.js";
import { unavailable } from "../kit/errors.js";
import { REQUEST_ID_HEADER } from "../kit/interceptors.js";
import { hiddenReason } from "./policy.js";

/** The headers an upstream service needs from the browser's call, and nothing else. */
function upstreamHeaders(ctx: HandlerContext): Headers {
  const headers = new Headers();
  const authorization = ctx.requestHeader.get("authorization");
  if (authorization) headers.set("authorization", authorization);
  const requestId = ctx.requestHeader.get(REQUEST_ID_HEADER);
  if (requestId) headers.set(REQUEST_ID_HEADER, requestId);
  // Always overwritten, never appended: the browser's own x-forwarded-for is not evidence of
  // anything, and services behind the edge trust this header for per-address login throttling.
  const clientIp = ctx.values.get(clientIpKey);
  if (clientIp) headers.set("x-forwarded-for", clientIp);
  return headers;
}

/**
 * An upstream error goes to the browser with the same code, message and details (ErrorInfo
 * reason, BadRequest, RetryInfo), but without the upstream's HTTP headers and trailers, which
 * belong to the other hop (content-type, grpc-status…). A transport failure with no ErrorInfo
 * (connection refused, reset) is the edge's own UNAVAILABLE and names no internal address.
 */
function passThrough(err: unknown, service: string): unknown {
  if (!(err instanceof ConnectError)) return err;
  const fromService = err.details.some((d) => ("type" in d ? d.type : d.desc.typeName) === ErrorInfoSchema.typeName);
  if (!fromService && err.code === Code.Unavailable) {
    return unavailable("UPSTREAM_UNAVAILABLE", `the ${service} service is unavailable; try again shortly`, 1_000);
  }
  const forwarded = new ConnectError(err.rawMessage, err.code, undefined, undefined, err.cause);
  // Received details stay as received (type name + bytes): both wire formats re-encode them as is.
  forwarded.details.push(...err.details);
  return forwarded;
}

async function* single<T>(message: T) {
  yield message;
}

export interface ForwardOptions {
  /** Deadline for unary calls that bring none; streams run until they end or the browser leaves. */
  defaultTimeoutMs: number;
}

/** Registers every rpc of `service` on the router, forwarded to `transport`. */
export function forwardService(router: ConnectRouter, service: DescService, transport: Transport, opts: ForwardOptions) {
  const name = service.typeName.split(".")[1] ?? service.typeName; // vouch.voucher.v1.X → voucher
  for (const method of service.methods) {
    if (hiddenReason(method)) {
      // Registered so the answer is a clear UNIMPLEMENTED / RPC_NOT_EXPOSED (from the guard)
      // rather than an HTTP 404; this handler never forwards anything.
      router.rpc(method as DescMethodUnary, () => {
        throw new ConnectError("not served by the edge", Code.Unimplemented);
      });
      continue;
    }
    switch (method.methodKind) {
      case "unary": {
        const m = method as DescMethodUnary;
        router.rpc(m, async (req, ctx) => {
          try {
            const res = await transport.unary(m, ctx.signal, ctx.timeoutMs() ?? opts.defaultTimeoutMs, upstreamHeaders(ctx), req);
            return res.message;
          } catch (err) {
            throw passThrough(err, name);
          }
        });
        break;
      }
      case "server_streaming": {
        const m = method as DescMethodServerStreaming;
        router.rpc(m, async function* (req, ctx) {
          try {
            const res = await transport.stream(m, ctx.signal, ctx.timeoutMs(), upstreamHeaders(ctx), single(req));
            yield* res.message;
          } catch (err) {
            throw passThrough(err, name);
          }
        });
        break;
      }
      default:
        // Client and bidi streams are hidden above; nothing else exists.
        break;
    }
  }
}
