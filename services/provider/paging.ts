// AIP-158 paging for the provider's lists: page_size 0 → 50, capped at 1000, negative is
// INVALID_ARGUMENT; opaque page tokens carry the last id and a hash of the filters, so a
// token is refused with other filters. (Same token format as auth's lists.)
import { createHash } from "node:crypto";
import { invalidArgument } from "../kit/errors.js";

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 1000;

export function pageSize(requested: number): number {
  if (requested < 0) throw invalidArgument([{ field: "page_size", reason: "PAGE_SIZE_INVALID", description: "must not be negative" }]);
  return requested === 0 ? DEFAULT_PAGE_SIZE : Math.min(requested, MAX_PAGE_SIZE);
}

const filterHash = (filters: unknown) => createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);

export function encodePageToken(lastId: string, filters: unknown): string {
  return Buffer.from(JSON.stringify({ a: lastId, f: filterHash(filters) })).toString("base64url");
}

/** The id to continue after, or undefined for the first page. */
export function decodePageToken(token: string, filters: unknown): string | undefined {
  if (!token) return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { a?: unknown; f?: unknown };
    if (typeof parsed.a === "string" && parsed.f === filterHash(filters)) return parsed.a;
  } catch {
    // fall through
  }
  throw invalidArgument([
    { field: "page_token", reason: "PAGE_TOKEN_INVALID", description: "is not a page token of this request (other fields must match the call that produced it)" },
  ]);
}

/** One page from `rows` fetched with limit + 1. */
export function pageOf<T extends { id: string }>(rows: T[], limit: number, filters: unknown): { items: T[]; nextPageToken: string } {
  const items = rows.slice(0, limit);
  return { items, nextPageToken: rows.length > limit ? encodePageToken(items[items.length - 1].id, filters) : "" };
}
