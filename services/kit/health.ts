// Liveness, readiness and grpc.health.v1. A service is SERVING when every dependency it
// declared (Postgres, Redis, NATS…) answers; results are cached briefly so that probes
// hammering /readyz or Health/Check never hammer the dependencies.
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
} from "../../gen/health/v1/health_pb.js";

export interface ReadinessCheck {
  /** Dependency name as shown by /readyz, e.g. `postgres`. */
  name: string;
  /** Resolves when the dependency answers; rejects (or times out) otherwise. */
  check: () => Promise<unknown>;
}

export interface ReadinessReport {
  ready: boolean;
  checks: Record<string, "ok" | string>;
}

const CHECK_TIMEOUT_MS = 1_000;
const CACHE_MS = 500;
const WATCH_INTERVAL_MS = 1_000;

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export class HealthMonitor {
  private cached: { at: number; report: Promise<ReadinessReport> } | undefined;
  private shuttingDown = false;

  constructor(
    private readonly checks: ReadinessCheck[],
    /** Fully-qualified names of the services this process serves, for per-service health. */
    private readonly serviceNames: string[],
  ) {}

  /** From now on report NOT_SERVING, so load balancers drain this replica before it stops. */
  markShuttingDown() {
    this.shuttingDown = true;
    this.cached = undefined;
  }

  readiness(): Promise<ReadinessReport> {
    const now = Date.now();
    if (this.cached && now - this.cached.at < CACHE_MS) return this.cached.report;
    const report = this.runChecks();
    this.cached = { at: now, report };
    return report;
  }

  private async runChecks(): Promise<ReadinessReport> {
    const results = await Promise.all(
      this.checks.map(async ({ name, check }) => {
        try {
          await withTimeout(check(), CHECK_TIMEOUT_MS);
          return [name, "ok"] as const;
        } catch (err) {
          return [name, err instanceof Error ? err.message : String(err)] as const;
        }
      }),
    );
    const checks = Object.fromEntries(results);
    if (this.shuttingDown) checks.process = "shutting down";
    return { ready: Object.values(checks).every((v) => v === "ok"), checks };
  }

  private knows(service: string) {
    return service === "" || this.serviceNames.includes(service);
  }

  private async status(): Promise<ServingStatus> {
    return (await this.readiness()).ready ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  }

  routes(router: ConnectRouter) {
    const impl: ServiceImpl<typeof Health> = {
      check: async (req) => {
        if (!this.knows(req.service)) throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
        return { status: await this.status() };
      },
      list: async () => {
        const status = await this.status();
        const statuses = Object.fromEntries(
          ["", ...this.serviceNames].map((name) => [name, create(HealthCheckResponseSchema, { status })]),
        );
        return { statuses };
      },
      watch: (req, ctx) => this.watch(req.service, ctx.signal),
    };
    router.service(Health, impl);
  }

  private async *watch(service: string, signal: AbortSignal) {
    if (!this.knows(service)) {
      yield { status: ServingStatus.SERVICE_UNKNOWN };
      return;
    }
    // Per the health protocol: send the current status, then only changes.
    let last: ServingStatus | undefined;
    while (!signal.aborted) {
      const current = await this.status();
      if (current !== last) {
        yield { status: current };
        last = current;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, WATCH_INTERVAL_MS);
        signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
      });
    }
  }
}
