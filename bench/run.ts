// `npm run bench`: the whole benchmark suite, one table. Runs the ceilings first, then every
// path's script as its own process (each starts the services it drives, in a database,
// stream and Redis prefix of its own, on loopback), collects the rows they report, and
// prints them with their ratios to the ceilings measured in this same run. Writes the rows
// to bench/results/<time>.json as well.
//
//   npm run bench                 full suite (≈ 10 minutes on 2 cores)
//   npm run bench -- --quick      short phases and a 100,000-code generation (a smoke run)
//   npm run bench -- voucher auth the ceilings, then only the scripts whose names contain these words
import { spawnSync } from "node:child_process";
import { cpus, loadavg, totalmem } from "node:os";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { goalsMet, readRows, resolveRatios, type BenchRow } from "./lib/harness.js";

const SCRIPTS = ["ceilings", "auth-login", "voucher", "promotion", "provider", "edge"];
const args = process.argv.slice(2);
const quick = args.includes("--quick");
const only = args.filter((a) => !a.startsWith("--"));
// The ceilings always run (first): every ratio is taken against this run's.
const selected = SCRIPTS.filter((s) => s === "ceilings" || only.length === 0 || only.some((o) => s.includes(o)));

const resultsDir = join("bench", "results");
mkdirSync(resultsDir, { recursive: true });
const stamp = new Date().toISOString().replace(/[:.]/g, "-");
const rowsFile = join(resultsDir, `${stamp}.jsonl`);
rmSync(rowsFile, { force: true });

const env = {
  ...process.env,
  BENCH_RESULT_FILE: rowsFile,
  ...(quick ? { BENCH_QUICK: "1" } : {}),
};
const failed: string[] = [];
// Per script: wall time and the machine's 1-minute load average before and after (other work
// on the machine lowers the absolute rates; the load average says how much there was).
const scripts: { script: string; seconds: number; loadBefore: number; loadAfter: number }[] = [];
const suiteStarted = Date.now();
for (const script of selected) {
  console.log(`\n── bench/${script}.ts ${"─".repeat(60 - script.length)}`);
  const started = Date.now();
  const loadBefore = loadavg()[0];
  const result = spawnSync(process.execPath, ["--import", "tsx", join("bench", `${script}.ts`)], { env, stdio: "inherit", timeout: 20 * 60_000 });
  if (result.status !== 0) failed.push(`${script} (exit ${result.status ?? result.signal})`);
  scripts.push({ script, seconds: Math.round((Date.now() - started) / 1000), loadBefore: Number(loadBefore.toFixed(2)), loadAfter: Number(loadavg()[0].toFixed(2)) });
  console.log(`   ${script} took ${((Date.now() - started) / 1000).toFixed(0)} s`);
}
const wallSeconds = Math.round((Date.now() - suiteStarted) / 1000);

// Every ratio is taken against a row of this same run (a ceiling, or a path's baseline).
const rows = resolveRatios(readRows(rowsFile));
const num = (n: number | undefined, digits = 0) => (n === undefined || Number.isNaN(n) ? "" : n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }));
const ms = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? "" : n < 10 ? n.toFixed(2) : n.toFixed(1));
const header = ["path", "via", "rate", "unit", "p50 ms", "p95 ms", "p99 ms", "errors", "RSS MiB", "ratio", "goal", "ceiling"];
const table = rows.map((r: BenchRow) => [
  r.path,
  r.via,
  num(r.rate),
  r.unit,
  ms(r.p50Ms),
  ms(r.p95Ms),
  ms(r.p99Ms),
  String(r.errors),
  num(r.rssMiB),
  r.ratio === undefined ? "" : r.ratio.toFixed(2),
  [r.goal === undefined ? "" : `≥ ${r.goal}`, r.targets?.length ? `+${r.targets.length}` : "", { true: "✓", false: "✗", undefined: "" }[String(goalsMet(r))]].filter(Boolean).join(" "),
  r.ceiling ?? "",
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;

console.log(`\nVouch bench — ${new Date().toISOString()} — node ${process.version}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB${quick ? " — QUICK run" : ""}`);
console.log(line(header));
console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
for (const t of table) console.log(line(t));

// Goals that are not ratios (`+n` in the goal column), and what the scripts noted.
for (const r of rows) {
  if (!r.targets?.length && !r.notes?.length) continue;
  console.log(`\n${r.path}:`);
  for (const t of r.targets ?? []) console.log(`  ${t.met ? "✓" : "✗"} ${t.goal}: ${t.value}`);
  for (const n of r.notes ?? []) console.log(`  ${n}`);
}

console.log(`\nwall time ${Math.floor(wallSeconds / 60)} min ${wallSeconds % 60} s: ${scripts.map((s) => `${s.script} ${s.seconds} s (load ${s.loadBefore} → ${s.loadAfter})`).join(", ")}`);
const summary = { time: new Date().toISOString(), node: process.version, cores: cpus().length, quick, wallSeconds, scripts, failed, rows };
const jsonFile = join(resultsDir, `${stamp}.json`);
writeFileSync(jsonFile, `${JSON.stringify(summary, null, 2)}\n`);
writeFileSync(join(resultsDir, "latest.json"), `${JSON.stringify(summary, null, 2)}\n`);
rmSync(rowsFile, { force: true });
console.log(`\nresults: ${jsonFile} (and bench/results/latest.json)`);
if (failed.length) {
  console.error(`failed: ${failed.join(", ")}`);
  process.exit(1);
}
