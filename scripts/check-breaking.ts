// `npm run check:breaking`: `buf breaking` (rules FILE, from buf.yaml) between the protos of
// the working tree and a baseline: the newest commit whose message says `Allow-Breaking:
// <reason>` (the last deliberate break, which that commit's tree already contains), else the
// oldest commit with protos (the first published contract). Comparing with the baseline
// rather than with the parent commit catches a break spread over several commits of one
// submission, and one made in any commit since the baseline, not only in the last.
//
// buf's own git input (`--against '.git#ref=…'`) cannot be used as is: the workspace in
// buf.yaml also takes the google.rpc, health and reflection protos from node_modules/, which
// git does not hold. So the baseline's buf.yaml and proto/ are extracted with `git archive`
// into a scratch directory, next to a node_modules/ link to today's packages (the same
// versions, pinned by the lockfile), and that directory is the `--against` input.
//
// Skipped, with a notice, in a shallow clone (the baseline may be cut off: fetch the history
// to check) or when no commit has protos yet. A breaking change not yet committed is let
// through by VOUCH_ALLOW_BREAKING=1; committed, it needs the `Allow-Breaking:` line.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const git = (...args: string[]) => spawnSync("git", args, { encoding: "utf8" });
const skip = (why: string) => {
  console.log(`buf breaking: skipped (${why})`);
  process.exit(0);
};

if (git("rev-parse", "--is-inside-work-tree").stdout.trim() !== "true") skip("not a git work tree");
if (git("rev-parse", "--verify", "--quiet", "HEAD^{commit}").status !== 0) skip("no commit yet");

if (git("rev-parse", "--is-shallow-repository").stdout.trim() === "true") skip("a shallow clone: the baseline commit may be missing; fetch the full history to check");
if (process.env.VOUCH_ALLOW_BREAKING === "1") skip("VOUCH_ALLOW_BREAKING=1");

const lastAllowed = git("log", "-1", "--format=%H", "-E", "-i", "--grep=^Allow-Breaking:[[:space:]]*[^[:space:]]", "HEAD").stdout.trim();
const firstContract = git("log", "--format=%H", "--", "proto").stdout.trim().split("\n").at(-1) ?? "";
const against = lastAllowed || firstContract;
if (!against) skip("no commit has protos yet");
if (git("cat-file", "-e", `${against}:proto`).status !== 0 || git("cat-file", "-e", `${against}:buf.yaml`).status !== 0) {
  skip(`${against} has no proto/ or buf.yaml`);
}
const baseline = `${git("rev-parse", "--short", against).stdout.trim()}, ${lastAllowed ? "the last Allow-Breaking commit" : "the first contract"}`;

const dir = mkdtempSync(join(tmpdir(), "vouch-breaking-"));
try {
  const archive = execFileSync("git", ["archive", "--format=tar", against, "buf.yaml", "proto"]);
  execFileSync("tar", ["-x", "-C", dir], { input: archive });
  symlinkSync(resolve("node_modules"), join(dir, "node_modules"), "dir");
  const r = spawnSync(join("node_modules", ".bin", "buf"), ["breaking", "--against", dir, "--error-format", "text"], { encoding: "utf8" });
  if (r.status === 0) {
    console.log(`buf breaking: no breaking change against ${baseline}`);
  } else {
    console.error(`buf breaking: the protos break compatibility with ${baseline}:\n${(r.stdout + r.stderr).replaceAll(dir, "<baseline>").trim()}`);
    console.error("If this break is intended (a contract nobody uses yet), say so in the commit message: `Allow-Breaking: <reason>`.");
    process.exitCode = 1;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
