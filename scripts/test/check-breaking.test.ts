// `npm run check:breaking` in a scratch git repository holding a copy of our buf.yaml and
// protos: a break is caught however many commits ago it was made, until a commit declares it.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";

const script = resolve("scripts/check-breaking.ts");
const tsx = resolve("node_modules/.bin/tsx");
const authProto = join("proto", "vouch", "auth", "v1", "auth.proto");
let repo: string;

const git = (...args: string[]) => execFileSync("git", args, { cwd: repo, encoding: "utf8" });
const commit = (message: string) => git("-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qam", message);
const check = () => spawnSync(tsx, [script], { cwd: repo, encoding: "utf8", env: { ...process.env, VOUCH_ALLOW_BREAKING: "" } });
const edit = (from: string, to: string) => {
  const path = join(repo, authProto);
  const text = readFileSync(path, "utf8");
  assert.ok(text.includes(from), `${from} is in auth.proto`);
  writeFileSync(path, text.replace(from, to));
};

before(() => {
  repo = mkdtempSync(join(tmpdir(), "vouch-check-breaking-"));
  cpSync("buf.yaml", join(repo, "buf.yaml"));
  cpSync("proto", join(repo, "proto"), { recursive: true });
  symlinkSync(resolve("node_modules"), join(repo, "node_modules"), "dir");
  writeFileSync(join(repo, ".gitignore"), "node_modules\n");
  git("init", "-q");
  git("add", ".");
  commit("the first contract");
});
after(() => rmSync(repo, { recursive: true, force: true }));

describe("check:breaking", () => {
  test("passes an additive change, and fails a break made two commits back", () => {
    edit("message GetMeRequest {}", "message GetMeRequest {\n  string unused_hint = 1;\n}");
    commit("an added field");
    assert.equal(check().status, 0, "adding a field is not a break");

    edit("string current_password = 1;", "string current_password = 9;");
    commit("renumber a field");
    writeFileSync(join(repo, "NOTES"), "later\n");
    git("add", "NOTES");
    commit("an unrelated commit on top");
    const r = check();
    assert.equal(r.status, 1, "the break two commits back is still caught");
    assert.match(r.stderr, /the first contract/);
    assert.match(r.stderr, /current_password/);
  });

  test("a commit saying Allow-Breaking becomes the baseline; a later break is caught again", () => {
    git("commit", "-q", "--allow-empty", "-m", "accept the renumbering\n\nAllow-Breaking: nobody uses ChangePassword yet");
    const allowed = check();
    assert.equal(allowed.status, 0, allowed.stderr);
    assert.match(allowed.stdout, /the last Allow-Breaking commit/);

    edit("string new_password = 2;", "string new_password = 8;");
    commit("renumber another");
    const r = check();
    assert.equal(r.status, 1);
    assert.match(r.stderr, /new_password/);
    assert.doesNotMatch(r.stderr, /current_password/, "the allowed break is not reported again");
  });
});
