// Unicode text hygiene shared by the input guard (what requests may carry) and the error
// mapper (what error messages and details may carry back).

/** An unpaired UTF-16 surrogate: not Unicode text, not encodable as UTF-8. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const LONE_SURROGATES = new RegExp(LONE_SURROGATE.source, "g");

export const isWellFormed = (s: string): boolean => !LONE_SURROGATE.test(s);

/** `s` with unpaired surrogates replaced by U+FFFD (what String#toWellFormed does). */
export const toWellFormed = (s: string): string => s.replace(LONE_SURROGATES, "\uFFFD");

/**
 * At most `max` UTF-16 units of well-formed text, marked with "…" when cut: echoed input must
 * not make an error too big for the HTTP/2 header block that carries it (grpc-message and
 * grpc-status-details-bin are headers).
 */
export function clip(s: string, max: number): string {
  const cut = s.length > max ? `${s.slice(0, max - 1)}…` : s;
  return toWellFormed(cut);
}
