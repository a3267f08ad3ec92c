// `npm run check:breaking`: `buf breaking` (rules FILE, from buf.yaml) between the protos of
// the working tree and those of the last commit: HEAD when the tree has uncommitted changes
// under proto/ (a developer before committing), else HEAD~1 (CI on a fresh clone: the
// commit being submitted against its parent).
//
// buf's own git input (`--against '.git#ref=HEAD~1'`) cannot be used as is: the workspace
// in buf.yaml also takes the google.rpc, health and reflection protos from node_modules/,
// which git does not hold. So the old commit's buf.yaml and proto/ are extracted with
// `git archive` into a scratch directory, next to a node_modules/ link to today's packages
// (the same versions, pinned by the lockfile), and that directory is the `--against` input.
//
// Skipped, with a notice, when there is no commit to compare with (a fresh repository, a
// shallow clone of depth 1) or it has no protos yet. A deliberate breaking change (allowed
// while a contract is unreleased) is let through by VOUCH_ALLOW_BREAKING=1, or by an
// `Allow-Breaking: <reason>` line in the message of the commit being checked.
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

const dirty = git("status", "--porcelain", "--", "proto", "buf.yaml").stdout.trim() !== "";
const against = dirty ? "HEAD" : "HEAD~1";
if (git("rev-parse", "--verify", "--quiet", `${against}^{commit}`).status !== 0) {
  skip(`no ${against} to compare with: a fresh repository or a shallow clone (fetch more history to check)`);
}
if (git("cat-file", "-e", `${against}:proto`).status !== 0 || git("cat-file", "-e", `${against}:buf.yaml`).status !== 0) {
  skip(`${against} has no proto/ or buf.yaml`);
}
if (process.env.VOUCH_ALLOW_BREAKING === "1") skip("VOUCH_ALLOW_BREAKING=1");
if (!dirty) {
  const message = git("log", "-1", "--format=%B", "HEAD").stdout;
  const allowed = /^Allow-Breaking:\s*(.+)$/im.exec(message);
  if (allowed) skip(`HEAD says Allow-Breaking: ${allowed[1].trim()}`);
}

const dir = mkdtempSync(join(tmpdir(), "vouch-breaking-"));
try {
  const archive = execFileSync("git", ["archive", "--format=tar", against, "buf.yaml", "proto"]);
  execFileSync("tar", ["-x", "-C", dir], { input: archive });
  symlinkSync(resolve("node_modules"), join(dir, "node_modules"), "dir");
  const sha = git("rev-parse", "--short", against).stdout.trim();
  const r = spawnSync(join("node_modules", ".bin", "buf"), ["breaking", "--against", dir, "--error-format", "text"], { encoding: "utf8" });
  if (r.status === 0) {
    console.log(`buf breaking: no breaking change against ${against} (${sha})`);
  } else {
    console.error(`buf breaking: the protos break compatibility with ${against} (${sha}):\n${(r.stdout + r.stderr).replaceAll(dir, "<" + against + ">").trim()}`);
    console.error("If this break is intended (a contract nobody uses yet), say so in the commit message: `Allow-Breaking: <reason>`.");
    process.exitCode = 1;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
