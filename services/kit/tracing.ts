// Distributed tracing, the parts the code calls: a span per rpc (server and client), per
// event consumed, and W3C trace context carried across every hop — gRPC metadata between
// services, and the outbox row's headers (so the NATS message's headers) between a
// producer's transaction and its consumers. One trace thus follows a first login from the
// edge through auth, the event, promotion's grant and the voucher it issues.
//
// Only `@opentelemetry/api` is used here: until `tracing-preload.ts` has registered the
// SDK (it does when an OTLP endpoint is configured), every call below is a cheap no-op.
import {
  context,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";

const tracer = () => trace.getTracer("vouch");

const headersSetter: TextMapSetter<Headers> = { set: (carrier, key, value) => carrier.set(key, value) };

/** Anything with `get(name)`: gRPC/HTTP request headers, NATS message headers. */
interface HeaderLookup {
  get(key: string): string | undefined | null;
}
// The W3C propagator only asks for these keys.
const headerGetter: TextMapGetter<HeaderLookup> = {
  keys: () => ["traceparent", "tracestate", "baggage"],
  get: (carrier, key) => carrier.get(key) || undefined,
};

/** The current trace context as headers (`traceparent`, …), to store with an outbox row. */
export function traceHeaders(): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier;
}

/** Trace and span ids of the active span, for log lines; empty outside a traced call. */
export function traceLogFields(): Record<string, string> {
  const span = trace.getActiveSpan();
  if (!span) return {};
  const { traceId, spanId } = span.spanContext();
  return { traceId, spanId };
}

function endWith(span: Span, err: unknown) {
  if (err !== undefined) {
    const code = err instanceof ConnectError ? err.code : Code.Internal;
    span.setAttribute("rpc.grpc.status_code", code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: Code[code] });
    if (!(err instanceof ConnectError)) span.recordException(err as Error);
  }
  span.end();
}

/** Runs `fn` with `span` active in `ctx` and ends the span with its outcome. */
async function runInSpan<T>(span: Span, ctx: Context, fn: () => Promise<T>): Promise<T> {
  try {
    const result = await context.with(ctx, fn);
    endWith(span, undefined);
    return result;
  } catch (err) {
    endWith(span, err);
    throw err;
  }
}

/**
 * Runs an rpc handler inside a SERVER span whose parent is the caller's trace context (from
 * the request headers). `finish` must be called exactly once, when the call's outcome is
 * known (for a stream, when it ends).
 */
export function startServerSpan(rpcService: string, rpcMethod: string, header: Headers): { ctx: Context; finish(err?: unknown): void } {
  const parent = propagation.extract(context.active(), header, headerGetter);
  const span = tracer().startSpan(
    `${rpcService}/${rpcMethod}`,
    { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.service": rpcService, "rpc.method": rpcMethod } },
    parent,
  );
  return { ctx: trace.setSpan(parent, span), finish: (err) => endWith(span, err) };
}

/**
 * For every client transport to a peer service: a CLIENT span per call, and its context in
 * the request headers so the peer's server span joins the same trace.
 */
export const traceClientInterceptor: Interceptor = (next) => async (req) => {
  const span = tracer().startSpan(`${req.service.typeName}/${req.method.name}`, {
    kind: SpanKind.CLIENT,
    attributes: { "rpc.system": "grpc", "rpc.service": req.service.typeName, "rpc.method": req.method.name },
  });
  const ctx = trace.setSpan(context.active(), span);
  propagation.inject(ctx, req.header, headersSetter);
  if (!req.stream) return runInSpan(span, ctx, () => next(req));
  // A stream's outcome is known only when its last message has been read (or it failed, or
  // the caller stopped reading): the response headers are only its start.
  let res: StreamResponse;
  try {
    res = (await context.with(ctx, () => next(req))) as StreamResponse;
  } catch (err) {
    endWith(span, err);
    throw err;
  }
  return { ...res, message: endSpanWhenDone(span, res.message) };
};

async function* endSpanWhenDone<T>(span: Span, messages: AsyncIterable<T>): AsyncIterable<T> {
  let failure: unknown;
  try {
    yield* messages;
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    endWith(span, failure);
  }
}

/**
 * Handles one event delivery inside a CONSUMER span whose parent is the producer's trace
 * context, carried in the message headers from the outbox row.
 */
export async function withConsumerSpan<T>(consumer: string, subject: string, headers: HeaderLookup | undefined, handle: () => Promise<T>): Promise<T> {
  const parent = headers ? propagation.extract(context.active(), headers, headerGetter) : context.active();
  const span = tracer().startSpan(
    `${subject} process`,
    { kind: SpanKind.CONSUMER, attributes: { "messaging.system": "nats", "messaging.destination.name": subject, "messaging.consumer.group.name": consumer } },
    parent,
  );
  return runInSpan(span, trace.setSpan(parent, span), handle);
}

/** Exports the spans still buffered (on shutdown, before the process exits). */
export async function flushTraces(): Promise<void> {
  const provider = trace.getTracerProvider() as { getDelegate?: () => { forceFlush?: () => Promise<void> } };
  await provider.getDelegate?.().forceFlush?.();
}
