// Runs every `*.test.ts` under services/ (and web/, scripts/ when they have tests) with
// node:test. Node 20 has no glob support for --test, so the files are listed here.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, sep } from "node:path";

// reliability/ holds the fault, fuzz and abuse suite (its CI part; VOUCH_SOAK=1 makes it a soak).
const roots = ["services", "scripts", "bench", "sdk", "web", "reliability"];
const only = process.argv.slice(2);

function findTests(dir: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  return entries.flatMap((name) => {
    if (name === "node_modules") return [];
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return findTests(path);
    return name.endsWith(".test.ts") ? [path] : [];
  });
}

const files = roots.flatMap(findTests).filter((f) => only.length === 0 || only.some((o) => f.includes(o))).sort();
if (files.length === 0) {
  console.error("no test files found");
  process.exit(1);
}
// The reliability suite's files each start a private Postgres, Redis, NATS and two replicas
// of every service, and run for minutes: they run after the others (not competing with them
// for the two cores), with a per-file budget of their own.
const reliability = (f: string) => f.startsWith(`reliability${sep}`);
const groups: [string[], number][] = [
  [files.filter((f) => !reliability(f)), 120_000],
  [files.filter(reliability), 900_000],
];
let status = 0;
for (const [group, timeoutMs] of groups) {
  if (group.length === 0) continue;
  const result = spawnSync(
    process.execPath,
    ["--import", "tsx", "--test", "--test-concurrency=2", `--test-timeout=${timeoutMs}`, ...group],
    { stdio: "inherit", env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? "warn" } },
  );
  if (result.status !== 0) status = result.status ?? 1;
}
process.exit(status);
