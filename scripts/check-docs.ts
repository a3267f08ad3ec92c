// `npm run check:docs`: the documentation cannot drift from the code.
//
// - docs/api.md and sdk/descriptor/vouch.binpb are exactly what `npm run gen:docs` makes
//   from proto/ today (scripts/gen-api-docs.ts);
// - the ER diagrams of docs/data-model.md are what the services' migrations create today
//   (scripts/gen-data-model.ts: needs the local Postgres, like the tests);
// - every ```mermaid block in the markdown files parses with mermaid's own parser (the
//   `mermaid` package's `parse`, run in Node without a browser), so the diagrams render;
// - relative links between the docs point at files that exist;
// - every metric registered under services/ is in docs/metrics.md.
import { readdirSync, readFileSync, statSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { API_DOC, DESCRIPTOR, bufImage, buildDescriptor, renderApiDocs } from "./gen-api-docs.js";
import { DATA_MODEL_DOC, renderErDiagrams, spliceDataModel } from "./gen-data-model.js";

const started = performance.now();
const problems: string[] = [];
const REGENERATE = "run `npm run gen:docs` and commit the result";

const read = (path: string) => (existsSync(path) ? readFileSync(path) : undefined);

if (read(API_DOC)?.toString("utf8") !== renderApiDocs(bufImage())) problems.push(`${API_DOC} is stale: ${REGENERATE}`);
if (!read(DESCRIPTOR)?.equals(buildDescriptor())) problems.push(`${DESCRIPTOR} is stale: ${REGENERATE}`);
const dataModel = read(DATA_MODEL_DOC)?.toString("utf8");
if (dataModel === undefined) problems.push(`${DATA_MODEL_DOC} is missing`);
else {
  try {
    if (spliceDataModel(dataModel, await renderErDiagrams()) !== dataModel) problems.push(`${DATA_MODEL_DOC}'s ER diagrams differ from the migrations: ${REGENERATE}`);
  } catch (err) {
    problems.push(`${DATA_MODEL_DOC}: ${(err as Error).message}`);
  }
}

function markdownFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (name === "node_modules" || name.startsWith(".")) return [];
    return statSync(path).isDirectory() ? markdownFiles(path) : name.endsWith(".md") ? [path] : [];
  });
}
const files = ["README.md", ...markdownFiles("docs"), ...markdownFiles("deploy"), ...markdownFiles("sdk")].filter((f) => existsSync(f));

// mermaid's parsers need no DOM, but some diagram types sanitise their labels with
// DOMPurify while parsing, which without a window has no hooks and no sanitize: give that
// (shared) instance no-op ones. Rendering is not checked, only the syntax.
const { default: purify } = await import("dompurify");
const stub = purify as unknown as Record<string, unknown>;
if (typeof stub.addHook !== "function") Object.assign(stub, { addHook() {}, removeHook() {}, removeHooks() {}, removeAllHooks() {}, sanitize: (s: string) => s });
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false, logLevel: "fatal" as never });
let diagrams = 0;
for (const file of files) {
  const text = readFileSync(file, "utf8");
  for (const m of text.matchAll(/^```mermaid\n([\s\S]*?)^```$/gm)) {
    diagrams++;
    const line = text.slice(0, m.index).split("\n").length;
    try {
      await mermaid.parse(m[1]);
    } catch (err) {
      problems.push(`${file}:${line}: mermaid: ${String((err as Error).message ?? err).split("\n").slice(0, 4).join(" ")}`);
    }
  }
  for (const link of text.matchAll(/\]\((?!https?:|#|mailto:)([^)\s#]+)(#[^)]*)?\)/g)) {
    if (!existsSync(join(dirname(file), link[1]))) problems.push(`${file}: broken link ${link[1]}`);
  }
}

// Metric names as the code registers them: through the kit's counter/gauge/histogram
// helpers, `new Counter({ name: … })`, or a `…_METRIC = "…"` constant.
const METRICS_DOC = "docs/metrics.md";
const metricsDoc = read(METRICS_DOC)?.toString("utf8") ?? "";
const sourceFiles = (dir: string): string[] =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === "test" ? [] : sourceFiles(path);
    return name.endsWith(".ts") ? [path] : [];
  });
const METRIC = /(?:\b(?:counter|gauge|histogram)\([^,()]+,\s*|\bname:\s*|_METRIC\s*=\s*)"(vouch_[a-z0-9_]+)"/g;
const metricNames = new Set<string>();
for (const file of sourceFiles("services")) {
  for (const m of readFileSync(file, "utf8").matchAll(METRIC)) {
    metricNames.add(m[1]);
    if (!metricsDoc.includes(`\`${m[1]}\``)) problems.push(`${METRICS_DOC}: metric ${m[1]} (${file}) is not documented`);
  }
}

if (problems.length) {
  console.error(`docs check failed:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(`docs: api.md, descriptor and ER diagrams current; ${diagrams} mermaid diagrams in ${files.length} files parse; ${metricNames.size} metrics documented (${Math.round(performance.now() - started)} ms)`);
