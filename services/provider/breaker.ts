// Every call to the outside provider goes through one opossum circuit breaker per replica.
//
// - A call that takes longer than `timeoutMs` (just above the provider's 3 s answer) fails.
// - Once `volumeThreshold` calls were made in the rolling window and more than
//   `errorThresholdPercentage` of them failed, the breaker opens: calls fail at once,
//   without touching the provider, for `resetTimeoutMs`.
// - Then it is half-open: exactly one call (the probe) goes through; the others still fail
//   fast. The probe's success closes the breaker, its failure opens it for another period.
// - A refusal (4xx, an unsupported PKCE method) means the provider is up: it is not counted
//   as a failure.
//
// The state is exported as `vouch_provider_breaker_state{state}` (1 for the current state).
import CircuitBreaker from "opossum";
import type { Registry } from "prom-client";
import { counter, gauge, histogram } from "../kit/events/metrics.js";
import type { Logger } from "../kit/log.js";
import { ProviderFailure, ProviderRefusal, type CodeOrder, type ProviderAnswer, type ProviderClient } from "./provider-client.js";
import type { BreakerSettings } from "./settings.js";

export type BreakerState = "closed" | "open" | "half_open";

/** The breaker is open: the provider was not called. */
export class BreakerOpen extends Error {
  override name = "BreakerOpen";
  constructor(readonly retryAfterMs: number) {
    super(`the provider's circuit breaker is open; next probe in ${retryAfterMs} ms`);
  }
}

export interface ProviderGateway {
  /** Calls the provider through the breaker. Throws BreakerOpen, ProviderFailure or ProviderRefusal. */
  requestCode(order: CodeOrder): Promise<ProviderAnswer>;
  state(): BreakerState;
  /** Until the breaker lets a probe through (0 when closed). */
  retryAfterMs(): number;
  shutdown(): void;
}

const CALL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 3.5, 5, 10];

export function createProviderGateway(opts: { client: ProviderClient; breaker: BreakerSettings; log: Logger; registry: Registry }): ProviderGateway {
  const { client, log } = opts;
  const settings = opts.breaker;
  const stateGauge = gauge(opts.registry, "vouch_provider_breaker_state", "State of the circuit breaker in front of the outside provider (1 for the current state).", ["state"]);
  const transitions = counter(opts.registry, "vouch_provider_breaker_transitions_total", "Circuit breaker state changes, by the state entered.", ["state"]);
  const calls = counter(opts.registry, "vouch_provider_calls_total", "Calls to the outside provider by outcome (code, acknowledged, refused, failed, timeout, short_circuited).", ["outcome"]);
  const callSeconds = histogram(opts.registry, "vouch_provider_call_seconds", "Duration of calls to the outside provider that reached it.", [], CALL_BUCKETS);

  const breaker = new CircuitBreaker(
    // The fetch gets its own deadline a little after the breaker's, so a call the breaker
    // has given up on does not linger.
    (order: CodeOrder) => client.requestCode(order, AbortSignal.timeout(settings.timeoutMs + 250)),
    {
      name: "voucher-provider",
      timeout: settings.timeoutMs,
      errorThresholdPercentage: settings.errorThresholdPercentage,
      volumeThreshold: settings.volumeThreshold,
      resetTimeout: settings.resetTimeoutMs,
      rollingCountTimeout: settings.rollingWindowMs,
      rollingCountBuckets: 10,
      // Neither latency percentiles nor snapshot events are used: skip their per-call cost and timers.
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
      errorFilter: (err: unknown) => err instanceof ProviderRefusal,
    },
  );

  let current: BreakerState = "closed";
  let openedAt = 0;
  const enter = (state: BreakerState) => {
    current = state;
    if (state === "open") openedAt = Date.now();
    for (const s of ["closed", "open", "half_open"] as const) stateGauge.set({ state: s }, s === state ? 1 : 0);
    transitions.inc({ state });
  };
  stateGauge.set({ state: "closed" }, 1);
  stateGauge.set({ state: "open" }, 0);
  stateGauge.set({ state: "half_open" }, 0);
  breaker.on("open", () => {
    enter("open");
    log.warn({ resetTimeoutMs: settings.resetTimeoutMs }, "provider circuit breaker opened: calls fail fast until a probe succeeds");
  });
  breaker.on("halfOpen", () => {
    enter("half_open");
    log.info("provider circuit breaker half-open: letting one probe through");
  });
  breaker.on("close", () => {
    enter("closed");
    log.info("provider circuit breaker closed: the provider answers again");
  });

  const retryAfterMs = () => {
    if (current === "closed") return 0;
    if (current === "half_open") return Math.min(1_000, settings.resetTimeoutMs);
    return Math.max(100, openedAt + settings.resetTimeoutMs - Date.now());
  };

  return {
    async requestCode(order) {
      const started = performance.now();
      try {
        const answer = (await breaker.fire(order)) as ProviderAnswer;
        calls.inc({ outcome: answer.kind });
        callSeconds.observe((performance.now() - started) / 1000);
        return answer;
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === "EOPENBREAKER" || code === "ESHUTDOWN") {
          calls.inc({ outcome: "short_circuited" });
          throw new BreakerOpen(retryAfterMs());
        }
        callSeconds.observe((performance.now() - started) / 1000);
        if (code === "ETIMEDOUT") {
          calls.inc({ outcome: "timeout" });
          throw new ProviderFailure(`provider did not answer within ${settings.timeoutMs} ms`, { cause: err });
        }
        if (err instanceof ProviderRefusal) {
          calls.inc({ outcome: "refused" });
          throw err;
        }
        calls.inc({ outcome: "failed" });
        throw err instanceof ProviderFailure ? err : new ProviderFailure(String(err), { cause: err });
      }
    },
    state: () => current,
    retryAfterMs,
    shutdown: () => {
      breaker.shutdown();
      client.close();
    },
  };
}
