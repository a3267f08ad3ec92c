// Loaded with `node --import` before a service's main module (see launch.ts), because
// tracing Postgres and Redis means patching `pg` and `ioredis` before anything imports
// them, and ES modules are all loaded before the first one runs.
//
// Off by default. It turns on when an OTLP endpoint is configured, with the standard
// OpenTelemetry variables: OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
// OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, grpc, http/json),
// OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME; OTEL_SDK_DISABLED=true
// wins over all of them. Only traces are exported: metrics stay on /metrics (prom-client)
// and logs on stdout (pino, with trace ids).
import { register } from "node:module";
import { basename, dirname } from "node:path";

const env = process.env;
const configured = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);

if (configured && env.OTEL_SDK_DISABLED !== "true") {
  // Hooks ES-module imports too (ioredis is imported as a module, never `require`d).
  register("@opentelemetry/instrumentation/hook.mjs", import.meta.url);
  env.OTEL_METRICS_EXPORTER ??= "none";
  env.OTEL_LOGS_EXPORTER ??= "none";
  // services/<name>/main.{ts,js} → vouch-<name>
  env.OTEL_SERVICE_NAME ??= `vouch-${basename(dirname(process.argv[1] ?? "vouch"))}`;

  const [{ NodeSDK }, { PgInstrumentation }, { IORedisInstrumentation }] = await Promise.all([
    import("@opentelemetry/sdk-node"),
    import("@opentelemetry/instrumentation-pg"),
    import("@opentelemetry/instrumentation-ioredis"),
  ]);
  const sdk = new NodeSDK({
    // Only inside a traced rpc or event: the relay's and sweepers' polling would otherwise
    // each start a trace of their own every few hundred milliseconds.
    instrumentations: [new PgInstrumentation({ requireParentSpan: true }), new IORedisInstrumentation({ requireParentSpan: true })],
  });
  sdk.start();
  // Services flush on graceful shutdown (platform close); this catches any other exit path.
  process.once("beforeExit", () => void sdk.shutdown());
}
