// The image's HEALTHCHECK: GET /healthz on the port of the service this container runs
// (`--ready`: GET /readyz, which also checks its Postgres/Redis/NATS; compose uses that).
// The service is read from PID 1's command line (the entrypoint execs
// `node /app/dist/services/<name>/main.js`), so it is right whether it was chosen by
// $SERVICE or by an argument; the port follows the same rules as the service's config.
import { readFileSync } from "node:fs";
import { loadConfig } from "../../dist/services/kit/config.js";

let service = process.env.SERVICE ?? "edge";
try {
  const match = /dist\/services\/([a-z-]+)\/main\.js/.exec(readFileSync("/proc/1/cmdline", "latin1"));
  if (match) service = match[1];
} catch {
  // not on Linux, or /proc hidden: keep $SERVICE
}
const { port } = loadConfig(service);
try {
  const res = await fetch(`http://127.0.0.1:${port}/${process.argv.includes("--ready") ? "readyz" : "healthz"}`, { signal: AbortSignal.timeout(2_500) });
  process.exit(res.ok ? 0 : 1);
} catch {
  process.exit(1);
}
