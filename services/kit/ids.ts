// Identifiers are UUIDv7 (RFC 9562): a 48-bit millisecond timestamp first, so ids sort by
// creation time and B-tree inserts stay at the right edge of the index. Within one process
// ids are strictly increasing: the 12 bits after the version are a counter (RFC 9562
// §6.2 method 1) reseeded at random every millisecond, and a full counter borrows the next one.
import { randomBytes } from "node:crypto";

let lastMs = 0;
let counter = 0;

export function newId(): string {
  let ms = Date.now();
  if (ms > lastMs) {
    lastMs = ms;
    counter = randomBytes(2).readUInt16BE(0) & 0x7ff; // leave half the range to count up in
  } else if (++counter > 0xfff) {
    lastMs += 1;
    counter = 0;
  }
  ms = lastMs;
  const b = randomBytes(16);
  b.writeUIntBE(ms, 0, 6);
  b[6] = 0x70 | (counter >> 8);
  b[7] = counter & 0xff;
  b[8] = 0x80 | (b[8] & 0x3f);
  const hex = b.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
