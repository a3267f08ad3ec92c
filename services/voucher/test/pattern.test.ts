// Code patterns and the domain rules, as plain functions (no servers).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CodeDrawer, checkCapacity, parsePattern, PatternError, UNAMBIGUOUS } from "../domain/pattern.js";
import { computeDiscount } from "../domain/model.js";

describe("code patterns", () => {
  test("parse literals, placeholders, repeats and escapes into codes of the documented shape", () => {
    const p = parsePattern("SUMMER-*{4}-##\\#@");
    assert.equal(p.length, 7 + 4 + 1 + 2 + 1 + 1);
    assert.equal(p.spaceSize, 31 ** 4 * 10 ** 2 * 26);
    const drawer = new CodeDrawer(p);
    for (let i = 0; i < 200; i++) assert.match(drawer.draw(), /^SUMMER-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{4}-\d\d#[A-Z]$/);
  });

  test("the unambiguous alphabet has no 0/O, 1/I/L", () => {
    assert.equal(UNAMBIGUOUS.length, 31);
    assert.doesNotMatch(UNAMBIGUOUS, /[01OIL]/);
  });

  test("syntax errors name their position", () => {
    const cases: [string, number][] = [
      ["AB-*{0}", 4],
      ["AB{3}***", 2],
      ["ab***", 0],
      ["****\\", 4],
      ["ABCD", 0],
      ["*{3}", 0],
      ["*{32}*{32}*", 0],
    ];
    for (const [source, position] of cases) {
      assert.throws(() => parsePattern(source), (err: unknown) => err instanceof PatternError && err.position === position, source);
    }
  });

  test("draws are unbiased: chi-square over 100,000 draws of each character class stays below the 0.001 critical value", () => {
    // Critical values of chi-square at p = 0.001: 9 df 27.88, 25 df 52.62, 30 df 59.70.
    const critical: Record<number, number> = { 10: 27.88, 26: 52.62, 31: 59.7 };
    for (const placeholder of ["#", "@", "*"]) {
      const drawer = new CodeDrawer(parsePattern(`X-${placeholder}{4}`));
      const alphabet = placeholder === "#" ? "0123456789" : placeholder === "@" ? "ABCDEFGHIJKLMNOPQRSTUVWXYZ" : UNAMBIGUOUS;
      const counts = new Map<string, number>([...alphabet].map((c) => [c, 0]));
      for (let i = 0; i < 25_000; i++) for (const ch of drawer.draw().slice(2)) counts.set(ch, counts.get(ch)! + 1);
      const expected = 100_000 / alphabet.length;
      const chi2 = [...counts.values()].reduce((s, n) => s + (n - expected) ** 2 / expected, 0);
      assert.equal(counts.size, alphabet.length, "no character outside the alphabet");
      assert.ok(chi2 < critical[alphabet.length], `${placeholder}: chi-square ${chi2.toFixed(2)} with ${alphabet.length - 1} df`);
    }
  });

  test("the capacity check refuses a pattern whose space is too small, with a reason people can act on", () => {
    const eight = parsePattern("*{8}");
    const refused = checkCapacity(eight, 0, 1_000_000, 1e-6);
    assert.equal(refused.acceptable, false);
    assert.match(refused.explanation, /852,891,037,441/);
    assert.match(refused.explanation, /add one more `\*`/);
    const accepted = checkCapacity(parsePattern("*{10}"), 0, 1_000_000, 1e-6);
    assert.equal(accepted.acceptable, true);
    assert.ok(Math.abs(accepted.expectedCollisions - 1e12 / (2 * 31 ** 10)) < 1e-9);
    assert.equal(checkCapacity(eight, 900_000, 0, 1e-6).acceptable, false, "existing codes count too");
  });
});

describe("discounts", () => {
  const usd = (minor: bigint) => ({ minor, currency: "USD" });
  test("a percentage is rounded down to the minor unit, then capped; never more than the order", () => {
    assert.deepEqual(computeDiscount({ kind: "percent", basisPoints: 3000, cap: null }, usd(999n)), usd(299n));
    assert.deepEqual(computeDiscount({ kind: "percent", basisPoints: 3000, cap: usd(100n) }, usd(999n)), usd(100n));
    assert.deepEqual(computeDiscount({ kind: "amount", amount: usd(500n) }, usd(300n)), usd(300n));
  });
});
