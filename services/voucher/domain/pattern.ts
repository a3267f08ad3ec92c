// Code patterns: parsing, drawing codes, and the capacity check. No SQL, no protobuf.
//
// Syntax (also in voucher.proto, Book.code_pattern):
//   *      one character of the unambiguous alphabet 23456789ABCDEFGHJKMNPQRSTUVWXYZ (31: no 0/O, 1/I/L)
//   #      one digit 0-9
//   @      one letter A-Z
//   {n}    after a placeholder: repeat it n times (1 to 32), e.g. *{8}
//   \c     the character c taken literally, e.g. \# (c one of * # @ { } \ or a literal character)
//   A-Z 0-9 - _   literal text (prefixes, suffixes, separators)
// At least one placeholder; codes are 4 to 64 characters.
import { randomFillSync } from "node:crypto";

export const UNAMBIGUOUS = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";
export const DIGITS = "0123456789";
export const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const PLACEHOLDERS: Record<string, string> = { "*": UNAMBIGUOUS, "#": DIGITS, "@": LETTERS };
const LITERAL = /^[A-Z0-9_-]$/;
const ESCAPABLE = /^[*#@{}\\A-Z0-9_-]$/;
export const MIN_CODE_LENGTH = 4;
export const MAX_CODE_LENGTH = 64;
const MAX_REPEAT = 32;

export type PatternPart = { kind: "literal"; text: string } | { kind: "random"; alphabet: string; count: number };

export interface Pattern {
  source: string;
  parts: PatternPart[];
  /** Length of every code drawn from it. */
  length: number;
  /** How many distinct codes it can produce (a double: exact up to 2^53). */
  spaceSize: number;
  /** log2(spaceSize). */
  entropyBits: number;
}

export class PatternError extends Error {
  /** 0-based position in the pattern where the problem is. */
  constructor(readonly position: number, message: string) {
    super(message);
  }
}

export function parsePattern(source: string): Pattern {
  const parts: PatternPart[] = [];
  let length = 0;
  let i = 0;
  const literal = (ch: string) => {
    const last = parts[parts.length - 1];
    if (last?.kind === "literal") last.text += ch;
    else parts.push({ kind: "literal", text: ch });
    length++;
  };
  while (i < source.length) {
    const ch = source[i];
    if (ch in PLACEHOLDERS) {
      let count = 1;
      let next = i + 1;
      if (source[next] === "{") {
        const close = source.indexOf("}", next);
        const digits = close > next ? source.slice(next + 1, close) : "";
        if (!/^\d{1,2}$/.test(digits) || Number(digits) < 1 || Number(digits) > MAX_REPEAT) {
          throw new PatternError(next, `"{n}" must hold a number from 1 to ${MAX_REPEAT}`);
        }
        count = Number(digits);
        next = close + 1;
      }
      parts.push({ kind: "random", alphabet: PLACEHOLDERS[ch], count });
      length += count;
      i = next;
    } else if (ch === "\\") {
      const escaped = source[i + 1];
      if (escaped === undefined || !ESCAPABLE.test(escaped)) {
        throw new PatternError(i, `"\\" must be followed by one of * # @ { } \\ or A-Z, 0-9, -, _`);
      }
      literal(escaped);
      i += 2;
    } else if (ch === "{") {
      throw new PatternError(i, `"{n}" must follow a placeholder (*, # or @)`);
    } else if (LITERAL.test(ch)) {
      literal(ch);
      i++;
    } else {
      throw new PatternError(i, `"${ch}" is not allowed: use *, #, @, {n}, \\, or literal A-Z, 0-9, - and _ (upper case)`);
    }
  }
  if (!parts.some((p) => p.kind === "random")) throw new PatternError(0, "a pattern needs at least one placeholder (*, # or @)");
  if (length < MIN_CODE_LENGTH || length > MAX_CODE_LENGTH) {
    throw new PatternError(0, `codes must be ${MIN_CODE_LENGTH} to ${MAX_CODE_LENGTH} characters; this pattern gives ${length}`);
  }
  let bits = 0;
  let exact = 1n;
  for (const p of parts) {
    if (p.kind !== "random") continue;
    bits += p.count * Math.log2(p.alphabet.length);
    exact *= BigInt(p.alphabet.length) ** BigInt(p.count);
  }
  return { source, parts, length, spaceSize: Number(exact), entropyBits: bits };
}

/**
 * Draws codes with an unbiased CSPRNG. Random bytes come from `crypto.randomFillSync` in
 * bulk; each character takes one byte by rejection sampling (a byte is used only when it
 * is below the largest multiple of the alphabet size ≤ 256, then reduced modulo the size),
 * which is what `crypto.randomInt` does, without its per-call cost (10 M calls for a
 * million 10-character codes).
 */
export class CodeDrawer {
  private readonly buffer = Buffer.alloc(64 * 1024);
  private pos = this.buffer.length;

  constructor(private readonly pattern: Pattern) {}

  private byteBelow(limit: number): number {
    for (;;) {
      if (this.pos >= this.buffer.length) {
        randomFillSync(this.buffer);
        this.pos = 0;
      }
      const b = this.buffer[this.pos++];
      if (b < limit) return b;
    }
  }

  /** One random index in [0, size) for size ≤ 256. */
  index(size: number): number {
    return this.byteBelow(256 - (256 % size)) % size;
  }

  draw(): string {
    let code = "";
    for (const part of this.pattern.parts) {
      if (part.kind === "literal") {
        code += part.text;
        continue;
      }
      const { alphabet, count } = part;
      for (let k = 0; k < count; k++) code += alphabet[this.index(alphabet.length)];
    }
    return code;
  }

  /** `n` codes, distinct among themselves. */
  drawDistinct(n: number): string[] {
    const seen = new Set<string>();
    while (seen.size < n) seen.add(this.draw());
    return [...seen];
  }
}

export interface Capacity {
  fillRatio: number;
  maxFillRatio: number;
  expectedCollisions: number;
  acceptable: boolean;
  explanation: string;
}

const fmt = (n: number) => (Number.isFinite(n) && n < 1e21 ? Math.round(n).toLocaleString("en-US") : n.toExponential(3));
const pct = (r: number) => `${(r * 100).toPrecision(2)}%`;

/**
 * Whether a pattern can hold `existing + planned` codes: the fill ratio is also the chance
 * that one random guess hits some code, so it is capped (e.g. 1e-6); the expected number
 * of redraws while generating is about n²/2·space.
 */
export function checkCapacity(pattern: Pattern, existing: number, planned: number, maxFillRatio: number): Capacity {
  const space = pattern.spaceSize;
  const total = existing + planned;
  const fillRatio = total / space;
  const expectedCollisions = (total * total - existing * existing) / (2 * space);
  const acceptable = fillRatio <= maxFillRatio;
  const what = planned > 0 ? `${fmt(planned)} codes${existing > 0 ? ` (plus ${fmt(existing)} existing)` : ""}` : `${fmt(existing)} existing codes`;
  let explanation = `${what} would fill ${pct(fillRatio)} of this pattern's ${fmt(space)} codes; at most ${pct(maxFillRatio)} is allowed`;
  if (acceptable) {
    explanation += ".";
  } else {
    // How many more `*` would make it fit.
    const more = Math.max(1, Math.ceil(Math.log(fillRatio / maxFillRatio) / Math.log(UNAMBIGUOUS.length)));
    explanation += `: add ${more === 1 ? "one more `*`" : `${more} more \`*\``}.`;
  }
  return { fillRatio, maxFillRatio, expectedCollisions, acceptable, explanation };
}

/** Normalises a code as typed: surrounding whitespace trimmed, letters upper-cased. */
export function normaliseCode(typed: string): string {
  return typed.trim().toUpperCase();
}

/** Imported codes: 4 to 64 of A-Z, 0-9, - and _ after normalisation. */
export const IMPORTABLE_CODE = /^[A-Z0-9_-]{4,64}$/;
