// Books, assignment and issuing against the real service: limits decided by the database,
// request ids and grant ids replayed, reads scoped to their owner.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";
import QRCode from "qrcode";
import { sql } from "kysely";
import { BadRequestSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { BookState, VoucherState } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { bookInput, failure, startHarness, usd, type Harness } from "./harness.js";

let h: Harness;
let admin: { headers: { authorization: string } };
let serial = 0;

before(async () => {
  h = await startHarness("assign");
  admin = await h.admin();
});
after(() => h?.close());

async function book(n: number, fields: Record<string, unknown> = {}, activate = true) {
  const { book } = await h.client.createBook({ book: bookInput(fields) }, admin);
  const prefix = `A${++serial}X${randomUUID().slice(0, 6).toUpperCase()}`;
  const codes = Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(5, "0")}`);
  for (let i = 0; i < codes.length; i += 10_000) await h.client.importCodes({ bookId: book!.id, codes: codes.slice(i, i + 10_000) }, admin);
  if (activate) await h.client.activateBook({ bookId: book!.id }, admin);
  return { bookId: book!.id, codes };
}

describe("assign", () => {
  test("500 concurrent assigns for distinct users plus 3 retries each: 500 distinct codes, and every retry gets its user's code", async () => {
    const { bookId } = await book(600);
    const users = Array.from({ length: 500 }, (_, i) => ({ userId: `u-${i}`, requestId: randomUUID() }));
    // Like a real client, each call retries on UNAVAILABLE (a saturated pool on a busy machine) with the same request_id.
    const assign = async (u: (typeof users)[number]) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return { u, v: (await h.client.assignVoucher({ bookId, userId: u.userId, requestId: u.requestId }, admin)).voucher! };
        } catch (err) {
          if (attempt >= 5 || (await failure(Promise.reject(err))).code !== "Unavailable") throw err;
        }
      }
    };
    const calls = users.flatMap((u) => Array.from({ length: 4 }, () => assign(u)));
    const results = await Promise.all(calls);
    const byUser = new Map<string, Set<string>>();
    for (const { u, v } of results) {
      assert.equal(v.ownerUserId, u.userId);
      byUser.set(u.userId, (byUser.get(u.userId) ?? new Set()).add(v.id));
    }
    for (const [user, ids] of byUser) assert.equal(ids.size, 1, `${user} got one code on every try`);
    assert.equal(new Set([...byUser.values()].map((s) => [...s][0])).size, 500, "500 distinct codes");
    const { rows } = await sql<{ owners: string; codes: string; held: string }>`
      SELECT count(DISTINCT owner_user_id) AS owners, count(*) AS codes,
             (SELECT sum(codes_held) FROM book_users WHERE book_id = ${bookId}) AS held
      FROM codes WHERE book_id = ${bookId} AND owner_user_id IS NOT NULL`.execute(h.voucher.platform.db);
    assert.deepEqual(rows[0], { owners: "500", codes: "500", held: "500" });
  });

  test("20 concurrent assigns for one user with a limit of 2 codes per user: exactly 2", async () => {
    const { bookId } = await book(50, { maxCodesPerUser: 2 });
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => h.client.assignVoucher({ bookId, userId: "u-greedy", requestId: randomUUID() }, admin)));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 2);
    for (const r of results.filter((r): r is PromiseRejectedResult => r.status === "rejected")) {
      assert.equal((await failure(Promise.reject(r.reason))).reason, "CODES_PER_USER_LIMIT_REACHED");
    }
    const { rows } = await sql<{ owned: string; held: number }>`
      SELECT (SELECT count(*) FROM codes WHERE book_id = ${bookId} AND owner_user_id = 'u-greedy') AS owned,
             (SELECT codes_held FROM book_users WHERE book_id = ${bookId} AND user_id = 'u-greedy') AS held`.execute(h.voucher.platform.db);
    assert.deepEqual(rows[0], { owned: "2", held: 2 });
  });

  test("draws a random free code, not the next one in order", async () => {
    const { bookId, codes } = await book(200);
    const got: string[] = [];
    for (let i = 0; i < 20; i++) got.push((await h.client.assignVoucher({ bookId, userId: `u-rand-${i}` }, admin)).voucher!.code);
    const positions = got.map((c) => codes.indexOf(c));
    assert.notDeepEqual(positions, [...positions].sort((a, b) => a - b), "not handed out in code order");
    assert.ok(Math.max(...positions) > 60, `spread over the book (max position ${Math.max(...positions)})`);
  });

  test("a specific code can be assigned once; another book's code is VOUCHER_NOT_FOUND", async () => {
    const { bookId, codes } = await book(3);
    const other = await book(1);
    const v = (await h.client.assignVoucher({ bookId, userId: "u-spec", code: codes[1].toLowerCase() }, admin)).voucher!;
    assert.equal(v.code, codes[1]);
    assert.equal((await failure(h.client.assignVoucher({ bookId, userId: "u-spec-2", code: codes[1] }, admin))).reason, "CODE_ALREADY_ASSIGNED");
    assert.equal((await failure(h.client.assignVoucher({ bookId, userId: "u-spec-2", code: other.codes[0] }, admin))).reason, "VOUCHER_NOT_FOUND");
  });

  test("a sold-out book is BOOK_SOLD_OUT; a draft or paused book is BOOK_NOT_ACTIVE", async () => {
    const { bookId } = await book(1);
    await h.client.assignVoucher({ bookId, userId: "u-last" }, admin);
    assert.equal((await failure(h.client.assignVoucher({ bookId, userId: "u-late" }, admin))).reason, "BOOK_SOLD_OUT");
    const draft = await book(1, {}, false);
    assert.equal((await failure(h.client.assignVoucher({ bookId: draft.bookId, userId: "u-x" }, admin))).reason, "BOOK_NOT_ACTIVE");
    await h.client.activateBook({ bookId: draft.bookId }, admin);
    await h.client.pauseBook({ bookId: draft.bookId }, admin);
    assert.equal((await failure(h.client.assignVoucher({ bookId: draft.bookId, userId: "u-x" }, admin))).reason, "BOOK_NOT_ACTIVE");
  });
});

describe("issue", () => {
  test("IssueVoucher is idempotent by grant id: 20 concurrent calls and a late retry give one voucher; another user under that grant is REQUEST_ID_REUSED", async () => {
    const { bookId } = await book(30);
    const service = await h.service();
    const grantId = randomUUID();
    const results = await Promise.all(Array.from({ length: 20 }, () => h.client.issueVoucher({ grantId, bookId, userId: "u-grant" }, service)));
    assert.equal(new Set(results.map((r) => r.voucher!.id)).size, 1);
    const late = await h.client.issueVoucher({ grantId, bookId, userId: "u-grant" }, service);
    assert.equal(late.voucher?.id, results[0].voucher?.id);
    assert.equal(late.voucher?.grantId, grantId);
    assert.equal((await failure(h.client.issueVoucher({ grantId, bookId, userId: "u-someone-else" }, service))).reason, "REQUEST_ID_REUSED");
    const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM codes WHERE book_id = ${bookId} AND owner_user_id IS NOT NULL`.execute(h.voucher.platform.db);
    assert.equal(rows[0].n, "1");
    const customer = await failure(h.client.issueVoucher({ grantId: randomUUID(), bookId, userId: "u-grant" }, await h.as("u-grant")));
    assert.deepEqual([customer.code, customer.reason], ["PermissionDenied", "SERVICE_REQUIRED"]);
  });
});

describe("reads", () => {
  test("a customer reads only their own vouchers (NOT_OWNER even for unknown ids); admins get NOT_FOUND", async () => {
    const { bookId } = await book(3);
    const mine = (await h.client.assignVoucher({ bookId, userId: "u-reader" }, admin)).voucher!;
    const theirs = (await h.client.assignVoucher({ bookId, userId: "u-neighbour" }, admin)).voucher!;
    const me = await h.as("u-reader");
    assert.equal((await h.client.getVoucher({ voucherId: mine.id }, me)).voucher?.code, mine.code);
    assert.equal((await failure(h.client.getVoucher({ voucherId: theirs.id }, me))).reason, "NOT_OWNER");
    assert.equal((await failure(h.client.getVoucher({ voucherId: "no-such-id" }, me))).reason, "NOT_OWNER");
    assert.equal((await failure(h.client.getVoucher({ voucherId: "no-such-id" }, admin))).reason, "VOUCHER_NOT_FOUND");
    assert.equal((await failure(h.client.batchGetVouchers({ voucherIds: [mine.id, theirs.id] }, me))).reason, "NOT_OWNER");
    const batch = await h.client.batchGetVouchers({ voucherIds: [theirs.id, mine.id, theirs.id] }, admin);
    assert.deepEqual(batch.vouchers.map((v) => v.id), [theirs.id, mine.id, theirs.id]);
  });

  test("ListMyVouchers pages newest first; a negative page_size or a token from other filters is INVALID_ARGUMENT", async () => {
    const { bookId } = await book(5);
    const assigned = [];
    for (let i = 0; i < 5; i++) assigned.push((await h.client.assignVoucher({ bookId, userId: "u-pager" }, admin)).voucher!.id);
    const me = await h.as("u-pager");
    const first = await h.client.listMyVouchers({ pageSize: 2 }, me);
    const second = await h.client.listMyVouchers({ pageSize: 2, pageToken: first.nextPageToken }, me);
    const third = await h.client.listMyVouchers({ pageSize: 2, pageToken: second.nextPageToken }, me);
    assert.deepEqual([...first.vouchers, ...second.vouchers, ...third.vouchers].map((v) => v.id), [...assigned].reverse());
    assert.equal(third.nextPageToken, "");
    const negative = await failure(h.client.listMyVouchers({ pageSize: -1 }, me));
    assert.deepEqual([negative.code, negative.reason], ["InvalidArgument", "INVALID_ARGUMENT"]);
    assert.equal(negative.err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field, "page_size");
    assert.equal((await failure(h.client.listMyVouchers({ pageToken: first.nextPageToken, state: VoucherState.REDEEMED }, me))).reason, "INVALID_ARGUMENT");
    assert.equal((await failure(h.client.listMyVouchers({ state: VoucherState.FREE }, me))).reason, "INVALID_ARGUMENT");
    const prefix = (await h.client.listVouchers({ codePrefix: first.vouchers[0].code.slice(0, 8), ownerUserId: "u-pager" }, admin)).vouchers;
    assert.ok(prefix.length >= 1 && prefix.every((v) => v.ownerUserId === "u-pager"));
  });

  test("the QR code (PNG and SVG) of a voucher encodes its code and nothing else, for its owner or an admin", async () => {
    const { bookId } = await book(1);
    const v = (await h.client.assignVoucher({ bookId, userId: "u-qr" }, admin)).voucher!;
    const qr = await h.client.getVoucherQrCode({ voucherId: v.id, sizePx: 128 }, await h.as("u-qr"));
    assert.deepEqual(Buffer.from(qr.png).subarray(0, 8), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    assert.deepEqual(Buffer.from(qr.png), await QRCode.toBuffer(v.code, { type: "png", width: 128, margin: 2, errorCorrectionLevel: "M" }));
    assert.match(qr.svg, /^<svg[\s\S]*<\/svg>\s*$/);
    const cached = await h.client.getVoucherQrCode({ voucherId: v.id, sizePx: 128 }, admin);
    assert.deepEqual(cached.png, qr.png);
    assert.equal((await failure(h.client.getVoucherQrCode({ voucherId: v.id }, await h.as("u-not-qr")))).reason, "NOT_OWNER");
  });
});

describe("books", () => {
  test("book rpcs are for admins; a bad book is INVALID_ARGUMENT with a violation per field", async () => {
    const customer = await failure(h.client.createBook({ book: bookInput() }, await h.as("u-cust")));
    assert.deepEqual([customer.code, customer.reason], ["PermissionDenied", "ADMIN_REQUIRED"]);
    const bad = await failure(
      h.client.createBook(
        {
          book: {
            name: "",
            discount: { kind: { case: "percentOff", value: { basisPoints: 20_000, maxAmount: { minorUnits: 5n, currencyCode: "usd" } } } },
            codePattern: "ab*",
            usesPerCode: 5000,
          },
          initialCodeCount: -1,
        },
        admin,
      ),
    );
    assert.equal(bad.code, "InvalidArgument");
    const fields = bad.err.findDetails(BadRequestSchema)[0].fieldViolations.map((v) => v.field).sort();
    assert.deepEqual(fields, [
      "book.code_pattern",
      "book.discount.percent_off.basis_points",
      "book.discount.percent_off.max_amount.currency_code",
      "book.name",
      "book.uses_per_code",
      "initial_code_count",
    ]);
    const syntax = bad.err.findDetails(BadRequestSchema)[0].fieldViolations.find((v) => v.field === "book.code_pattern");
    assert.match(syntax!.description, /position 0/);
  });

  test("states change by custom methods only where allowed; discount and uses are frozen once the book leaves DRAFT", async () => {
    const { book } = await h.client.createBook({ book: bookInput({ minimumOrderAmount: usd(100) }), requestId: randomUUID() }, admin);
    const id = book!.id;
    await h.client.updateBook({ book: { id, usesPerCode: 3, discount: { kind: { case: "amountOff", value: usd(250) } } }, updateMask: { paths: ["uses_per_code", "discount"] } }, admin);
    assert.equal((await failure(h.client.pauseBook({ bookId: id }, admin))).reason, "INVALID_BOOK_STATE_TRANSITION");
    assert.equal((await h.client.activateBook({ bookId: id }, admin)).book?.state, BookState.ACTIVE);
    assert.equal((await h.client.activateBook({ bookId: id }, admin)).book?.state, BookState.ACTIVE, "activating an active book is a no-op");
    const frozen = await failure(h.client.updateBook({ book: { id, usesPerCode: 1 }, updateMask: { paths: ["uses_per_code"] } }, admin));
    assert.deepEqual([frozen.code, frozen.reason], ["FailedPrecondition", "BOOK_FIELD_IMMUTABLE"]);
    const renamed = await h.client.updateBook({ book: { id, name: "Renamed" }, updateMask: { paths: ["name"] } }, admin);
    assert.equal(renamed.book?.name, "Renamed");
    assert.equal(renamed.book?.usesPerCode, 3);
    assert.equal(renamed.book?.discount?.kind.case, "amountOff");
    await h.client.archiveBook({ bookId: id }, admin);
    assert.equal((await failure(h.client.activateBook({ bookId: id }, admin))).reason, "INVALID_BOOK_STATE_TRANSITION");
    const archived = await h.client.listBooks({ state: BookState.ARCHIVED }, admin);
    assert.ok(archived.books.some((b) => b.id === id) && archived.books.every((b) => b.state === BookState.ARCHIVED));
    assert.equal((await failure(h.client.listBooks({ pageSize: -5 }, admin))).code, "InvalidArgument");
    assert.equal((await failure(h.client.getBook({ bookId: "nope" }, admin))).reason, "BOOK_NOT_FOUND");
  });

  test("CreateBook with a request_id replays its first result and refuses another book under the same id", async () => {
    const requestId = randomUUID();
    const first = await h.client.createBook({ book: bookInput({ name: "Once" }), requestId }, admin);
    const again = await h.client.createBook({ book: bookInput({ name: "Once" }), requestId }, admin);
    assert.equal(again.book?.id, first.book?.id);
    assert.equal((await failure(h.client.createBook({ book: bookInput({ name: "Twice" }), requestId }, admin))).reason, "REQUEST_ID_REUSED");
  });

  test("importing codes reports duplicates in the request and codes existing anywhere on the platform", async () => {
    const { bookId, codes } = await book(2);
    const other = await h.client.createBook({ book: bookInput() }, admin);
    const res = await h.client.importCodes({ bookId: other.book!.id, codes: [codes[0], "fresh-code-1", "FRESH-CODE-1", " fresh-code-2 "] }, admin);
    assert.equal(res.importedCount, 2);
    assert.deepEqual(res.duplicateCodes, [codes[0], "FRESH-CODE-1"]);
    const malformed = await failure(h.client.importCodes({ bookId, codes: ["OK-CODE", "no spaces allowed"] }, admin));
    assert.equal(malformed.err.findDetails(BadRequestSchema)[0].fieldViolations[0].field, "codes[1]");
    assert.equal((await h.client.getBook({ bookId: other.book!.id }, admin)).book?.codeCount, 2n);
  });
});
