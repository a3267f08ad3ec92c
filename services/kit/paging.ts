// Paging for every List rpc (AIP-158): page_size 0 → 50, capped at 1000, negative is
// INVALID_ARGUMENT. Page tokens are opaque, and bound to the filters of the request that
// produced them, so a token replayed with other filters is INVALID_ARGUMENT, not a silently wrong page.
import { createHash } from "node:crypto";
import { invalidArgument } from "./errors.js";

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 1000;

export function pageSize(requested: number): number {
  if (requested < 0) throw invalidArgument([{ field: "page_size", reason: "PAGE_SIZE_INVALID", description: "must not be negative" }]);
  return requested === 0 ? DEFAULT_PAGE_SIZE : Math.min(requested, MAX_PAGE_SIZE);
}

const filterHash = (filters: unknown) => createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);

export function encodePageToken<T>(position: T, filters: unknown): string {
  return Buffer.from(JSON.stringify({ p: position, f: filterHash(filters) })).toString("base64url");
}

export function decodePageToken<T>(token: string, filters: unknown): T | undefined {
  if (!token) return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { p?: T; f?: unknown };
    if (parsed.p !== undefined && parsed.f === filterHash(filters)) return parsed.p;
  } catch {
    // fall through
  }
  throw invalidArgument([
    { field: "page_token", reason: "PAGE_TOKEN_INVALID", description: "is not a page token of this request (other fields must match the call that produced it)" },
  ]);
}

/** One page: the rows to return and the token of the next page (empty at the end). */
export function page<T, P>(rows: T[], limit: number, filters: unknown, positionOf: (last: T) => P): { items: T[]; next: string } {
  const items = rows.slice(0, limit);
  return { items, next: rows.length > limit ? encodePageToken(positionOf(items[items.length - 1]), filters) : "" };
}
