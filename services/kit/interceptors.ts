// The interceptor every service runs outermost: request id, trace span, per-call logger,
// metrics, and the single place where thrown errors become wire errors.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";
import { context } from "@opentelemetry/api";
import { toConnectError } from "./errors.js";
import { loggerKey } from "./context.js";
import type { Logger } from "./log.js";
import type { Metrics } from "./metrics.js";
import { startServerSpan } from "./tracing.js";

export const REQUEST_ID_HEADER = "x-request-id";

export function observeInterceptor(opts: { domain: string; log: Logger; metrics: Metrics }): Interceptor {
  const { domain, log, metrics } = opts;
  return (next) => async (req) => {
    const rpc = `${req.service.typeName}/${req.method.name}`;
    const requestId = req.header.get(REQUEST_ID_HEADER) || randomUUID();
    const span = startServerSpan(req.service.typeName, req.method.name, req.header);
    const callLog = log.child({ requestId, rpc });
    req.contextValues.set(loggerKey, callLog);
    const started = process.hrtime.bigint();
    /** Records the outcome: `err` is the wire error, none for OK. */
    const finish = (err?: ConnectError) => {
      span.finish(err);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const codeName = err ? Code[err.code] : "OK";
      metrics.rpcRequests.inc({ rpc, code: codeName });
      metrics.rpcDuration.observe({ rpc }, seconds);
      callLog.debug({ code: codeName, ms: seconds * 1000 }, "rpc done");
    };
    const fail = (err: unknown): never => {
      const wire = toConnectError(err, domain, callLog);
      finish(wire);
      throw wire;
    };
    // Everything below runs in the span's context, so every log line of the call (errors
    // included) carries its trace id, and the handler's SQL, Redis and peer calls join it.
    return context.with(span.ctx, async () => {
      try {
        const res = await next(req);
        res.header.set(REQUEST_ID_HEADER, requestId);
        if (!res.stream) {
          finish();
          return res;
        }
        // Streaming: the outcome is only known when the stream ends.
        const source = res.message;
        const inSpan = <T>(fn: () => T) => context.with(span.ctx, fn);
        return {
          ...res,
          message: (async function* () {
            try {
              yield* source;
              inSpan(() => finish());
            } catch (err) {
              inSpan(() => fail(err));
            }
          })(),
        };
      } catch (err) {
        return fail(err);
      }
    });
  };
}

export { ConnectError };
