// How every Vouch process is started from source — by `npm start`, the test platforms,
// the reliability cluster and the benchmarks alike: TypeScript through tsx, then the
// tracing preload (a no-op unless OTLP is configured), then the service's main module.
const preload = new URL("./tracing-preload.ts", import.meta.url).href;

/** Node arguments that run `entry` (e.g. `services/auth/main.ts`) as a service process. */
export function serviceNodeArgs(entry: string): string[] {
  return ["--import", "tsx", "--import", preload, entry];
}
