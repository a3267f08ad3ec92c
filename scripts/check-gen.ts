// Fails when gen/ is not exactly what `buf generate` produces from proto/ today, so the
// committed SDK code can never drift from the contracts.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

function listFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? listFiles(path) : [path];
  });
}

const out = mkdtempSync(join(tmpdir(), "vouch-gen-"));
try {
  // Same buf.gen.yaml, output rooted in a scratch directory.
  execFileSync(join("node_modules", ".bin", "buf"), ["generate", "-o", out], { stdio: ["ignore", "inherit", "inherit"] });
  const freshDir = join(out, "gen");
  const fresh = new Map(listFiles(freshDir).map((f) => [relative(freshDir, f), readFileSync(f, "utf8")]));
  const committed = new Map(listFiles("gen").map((f) => [relative("gen", f), readFileSync(f, "utf8")]));
  const stale = [...new Set([...fresh.keys(), ...committed.keys()])].filter((f) => fresh.get(f) !== committed.get(f));
  if (stale.length > 0) {
    console.error(`gen/ is stale; run \`npm run gen\` and commit. Differing files:\n  ${stale.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`gen/ is current (${fresh.size} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
