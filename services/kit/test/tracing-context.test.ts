// The in-process half of tracing: the caller's W3C trace context is picked up from request
// headers, log lines written inside a traced call carry its ids, and the context handed
// to the outbox (then NATS headers) is that same trace. The cross-process half is
// tracing.test.ts.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { context } from "@opentelemetry/api";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { createLogger } from "../log.js";
import { startServerSpan, traceHeaders } from "../tracing.js";

// What tracing-preload.ts does when OTLP is configured, minus the exporter.
const provider = new NodeTracerProvider();
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
