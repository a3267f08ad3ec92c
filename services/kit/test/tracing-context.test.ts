// The in-process half of tracing: the caller's W3C trace context is picked up from request
// headers, log lines written inside a traced call carry its ids, and the context handed
// to the outbox (then NATS headers) is that same trace. The cross-process half is
// tracing.test.ts.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { SpanStatusCode, context } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { createLogger } from "../log.js";
import { startServerSpan, traceClientInterceptor, traceHeaders } from "../tracing.js";

// What tracing-preload.ts does when OTLP is configured, with spans kept in memory instead.
const finished = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(finished)] });
provider.register();
after(() => provider.shutdown());

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const incoming = () => new Headers({ traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01` });

function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger("test", "info", { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { log, lines };
}

test("a log line inside a traced call carries the caller's trace id and the call's span id", () => {
  const { log, lines } = capturingLogger();
  const span = startServerSpan("vouch.test.v1.TestService", "Do", incoming());
  context.with(span.ctx, () => log.info("inside"));
  span.finish();
  log.info("outside");

  assert.equal(lines[0].traceId, TRACE_ID);
  assert.match(String(lines[0].spanId), /^[0-9a-f]{16}$/);
  assert.notEqual(lines[0].spanId, "00f067aa0ba902b7", "the call has a span of its own under the caller's");
  assert.equal(lines[1].traceId, undefined);
});

test("the headers stored with an outbox event continue the current trace", () => {
  const span = startServerSpan("vouch.test.v1.TestService", "Do", incoming());
  const headers = context.with(span.ctx, traceHeaders);
  span.finish();
  assert.match(headers.traceparent, new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-01$`));
  assert.deepEqual(traceHeaders(), {}, "outside a traced call there is nothing to carry");
});

test("the client span of a server stream lasts until its last message, and carries the stream's failure", async () => {
  const { VoucherService } = await import("../../../gen/vouch/voucher/v1/voucher_pb.js");
  const method = VoucherService.method.watchGenerationJob;
  const spanOf = () => finished.getFinishedSpans().filter((s) => s.name === `${VoucherService.typeName}/${method.name}`);
  /** A stream call through the interceptor, its "server" sending two messages and then `end`. */
  const call = (end: "ok" | Error) =>
    traceClientInterceptor(async () => ({
      stream: true as const,
      service: VoucherService,
      method,
      header: new Headers(),
      trailer: new Headers(),
      message: (async function* () {
        yield {};
        yield {};
        if (end !== "ok") throw end;
      })(),
    }) as never)({ stream: true, service: VoucherService, method, header: new Headers() } as never) as Promise<{ message: AsyncIterable<unknown> }>;

  finished.reset();
  const ok = await call("ok");
  assert.equal(spanOf().length, 0, "not ended when the headers arrive");
  let read = 0;
  for await (const _ of ok.message) {
    read++;
    assert.equal(spanOf().length, 0, "not ended while messages come");
  }
  assert.equal(read, 2);
  assert.equal(spanOf().length, 1, "ended after the last message");
  assert.equal(spanOf()[0].status.code, SpanStatusCode.UNSET);

  finished.reset();
  const failing = await call(new ConnectError("gone", Code.Unavailable));
  await assert.rejects(async () => {
    for await (const _ of failing.message);
  }, /gone/);
  assert.equal(spanOf()[0].status.code, SpanStatusCode.ERROR);
  assert.equal(spanOf()[0].attributes["rpc.grpc.status_code"], Code.Unavailable);

  finished.reset();
  const abandoned = await call("ok");
  for await (const _ of abandoned.message) break; // the caller stops reading
  assert.equal(spanOf().length, 1, "ended when the caller stops reading");
});
