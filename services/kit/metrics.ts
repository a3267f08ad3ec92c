// Prometheus metrics. One registry per service (not prom-client's global one), so that
// several services started in one process for tests never mix their series.
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface Metrics {
  registry: Registry;
  rpcRequests: Counter<"rpc" | "code">;
  rpcDuration: Histogram<"rpc">;
}

export function createMetrics(service: string, { processMetrics = true } = {}): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  if (processMetrics) collectDefaultMetrics({ register: registry, prefix: "vouch_" });
  return {
    registry,
    rpcRequests: new Counter({
      name: "vouch_rpc_requests_total",
      help: "Completed rpcs by full method name and gRPC status code name.",
      labelNames: ["rpc", "code"],
      registers: [registry],
    }),
    rpcDuration: new Histogram({
      name: "vouch_rpc_duration_seconds",
      help: "Time from request to response headers (unary) or end of stream (streaming).",
      labelNames: ["rpc"],
      // Sub-millisecond buckets: our own work per call should be small next to the ~100 µs protocol cost.
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
  };
}
