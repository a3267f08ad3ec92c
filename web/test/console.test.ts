// The console end to end in headless Chromium (Debian's `chromium`, driven by playwright-core)
// against a real platform: auth, voucher, promotion, provider, provider-sim and the edge as
// separate processes on real Postgres, Redis and NATS. An admin logs in, creates a book of
// 1,000 codes and watches generation reach 100%, opens a QR code, creates a first-login
// campaign; a customer registers, logs in for the first time and sees the 30% voucher; a
// admin rolls a customer's redemption back with a reason and makes them an admin; an admin
// searches codes, exports CSV, imports a list and retries a failed provider request; a
// refresh failing offline or rate limited keeps the session, a refused one ends it.
// Screenshots of each page go to test-artifacts/console/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { randomInt } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { decodeJwt } from "jose";
import { chromium, type Browser, type Page } from "playwright-core";
import { AuthService } from "../../gen/vouch/auth/v1/auth_pb.js";
import { CodeRequestState, ProviderService } from "../../gen/vouch/provider/v1/provider_pb.js";
import { DeliveryChannel } from "../../gen/vouch/type/v1/provider_code_pb.js";
import { VoucherService } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import { ADMIN, startTestPlatform, type TestPlatform } from "../../services/edge/test/platform.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const DIST = "web/dist/index.html";
const ARTIFACTS = "test-artifacts/console";

let platform: TestPlatform;
let browser: Browser;
let edgeUrl: string;
/** Set when the admin's campaign was created and activated; the customer's voucher depends on it. */
let campaignActive = false;

function newestMtime(dir: string): number {
  return readdirSync(dir).reduce((max, name) => {
    const path = join(dir, name);
    const st = statSync(path);
    return Math.max(max, st.isDirectory() ? newestMtime(path) : st.mtimeMs);
  }, 0);
}

/** Builds the console unless web/dist is newer than every source file. */
function ensureBuild() {
  const sources = Math.max(newestMtime("web/src"), statSync("web/index.html").mtimeMs, statSync("web/vite.config.ts").mtimeMs);
  if (existsSync(DIST) && statSync(DIST).mtimeMs >= sources) return;
  const built = spawnSync(process.execPath, ["node_modules/vite/bin/vite.js", "build", "--config", "web/vite.config.ts", "--logLevel", "warn"], { encoding: "utf8" });
  assert.equal(built.status, 0, `console build failed:\n${built.stdout}\n${built.stderr}`);
}

async function shot(page: Page, name: string) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function signInAsAdmin(page: Page) {
  await page.goto(`${edgeUrl}/login`);
  await page.getByLabel("Username, email or phone number").fill(ADMIN.username);
  await page.getByLabel("Password").fill(ADMIN.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
}

/** A new page with the admin signed in, and the page errors it collects. */
async function signedInAdminPage(): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems: string[] = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  await signInAsAdmin(page);
  return { page, problems };
}

before(async () => {
  if (!existsSync(CHROMIUM)) return;
  mkdirSync(ARTIFACTS, { recursive: true });
  ensureBuild();
  platform = await startTestPlatform("console", ["auth", "voucher", "promotion", "provider", "provider-sim", "edge"], {
    // Access tokens of 65 s: the console refreshes them silently every ~5 s (a minute before
    // expiry), so the admin's session below goes through several refresh-token rotations.
    auth: { TRUST_FORWARDED_FOR: "true", AUTH_ACCESS_TOKEN_TTL_SECONDS: "65" },
    // A request the sim keeps failing ends FAILED after two tries, 200 ms apart (the retry test).
    provider: { PROVIDER_MAX_ATTEMPTS: "2", PROVIDER_RETRY_BACKOFF_MS: "200" },
    // The provider answers inline within half a second, so the customer's code arrives in the test's time.
    "provider-sim": { PROVIDER_SIM_BEHAVIOUR: JSON.stringify({ default: { latency: [{ weight: 1, minMs: 100, maxMs: 500 }] } }) },
  });
  edgeUrl = platform.urls.edge!;
  // launch() gives every run a fresh temporary profile (user-data-dir) and removes it on close.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await platform?.stop();
});

test("an admin signs in, creates a book of 1,000 codes, watches it reach 100%, opens a QR, creates a first-login campaign", { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is missing (apt-get install chromium)` }, async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems: string[] = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => msg.type() === "error" && !/status of 4\d\d|ERR_ABORTED/.test(msg.text()) && problems.push(`console: ${msg.text()}`));
  try {
    await page.goto(edgeUrl);
    await page.waitForURL("**/login");
    await page.getByRole("heading", { name: "Sign in to Vouch" }).waitFor();
    // A wrong password is explained, not dumped.
    await page.getByLabel("Username, email or phone number").fill(ADMIN.username);
    await page.getByLabel("Password").fill("not-the-password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong username, email, phone number or password." }).waitFor();
    await shot(page, "01-login-error");
    await page.getByLabel("Password").fill(ADMIN.password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Dashboard" }).waitFor();
    await shot(page, "02-dashboard-empty");
    const refreshToken = () => page.evaluate(() => (JSON.parse(sessionStorage.getItem("vouch.session") ?? "{}") as { refreshToken?: string }).refreshToken);
    const firstRefreshToken = await refreshToken();
    assert.ok(firstRefreshToken, "the session is kept");

    // Books: live pattern preview, then generation progress from the watch stream.
    await page.getByRole("link", { name: "Books" }).click();
    await page.getByLabel("Book name").fill("Browser book");
    await page.getByLabel("Number of codes").fill("1000");
    await page.getByLabel("Code pattern").fill("BRW-****-****");
    await page.getByTestId("pattern-preview").filter({ hasText: "Odds are fine" }).waitFor();
    await shot(page, "03-book-preview");
    await page.getByRole("button", { name: "Create book" }).click();
    await page.getByTestId("generation").getByTestId("progress-text").filter({ hasText: "(100%)" }).waitFor({ timeout: 30_000 });
    assert.match((await page.getByTestId("generation").getByTestId("progress-text").textContent()) ?? "", /1,?000 \/ 1,?000 \(100%\)/);
    await shot(page, "04-book-generated");

    // The book's codes, and one code's QR.
    await page.getByRole("status").getByRole("link", { name: "Browser book" }).click();
    await page.getByRole("heading", { name: "Browser book" }).waitFor();
    await page.getByTestId("code-row").first().waitFor();
    await page.getByTestId("code-row").first().getByRole("button", { name: "QR" }).click();
    const qr = page.getByRole("dialog").getByRole("img");
    await qr.waitFor();
    assert.ok(await qr.evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0), "the QR image loaded");
    await shot(page, "05-qr");
    await page.keyboard.press("Escape");

    // A first-login campaign: 30% off, activated at once.
    await page.getByRole("link", { name: "Campaigns" }).click();
    await page.getByLabel("Campaign name").fill("Welcome 30%");
    await page.getByLabel("Quota (people)").fill("100");
    await page.getByLabel("Discount (%)").fill("30");
    await page.getByLabel("Voucher code pattern").fill("WLC-****-****");
    await page.getByRole("button", { name: "Create campaign" }).click();
    const outcome = await Promise.race([
      page.getByTestId("campaign-row").filter({ hasText: "Welcome 30%" }).filter({ hasText: "Active" }).waitFor({ timeout: 20_000 }).then(() => "active"),
      page.getByRole("alert").waitFor({ timeout: 20_000 }).then(async () => (await page.getByRole("alert").first().textContent()) ?? "error"),
    ]);
    await shot(page, "06-campaigns");
    if (outcome !== "active") assert.fail(`creating the campaign failed: ${outcome}`);
    campaignActive = true;

    // Every other admin page renders (with its empty state or data) without errors.
    for (const [link, heading, file] of [
      ["Dashboard", "Dashboard", "07-dashboard"],
      ["Redemptions", "Redemptions", "08-redemptions"],
      ["Provider requests", "Provider requests", "09-provider-requests"],
      ["Users", "Users", "10-users"],
    ] as const) {
      await page.getByRole("link", { name: link, exact: true }).click();
      await page.getByRole("heading", { name: heading, exact: true }).waitFor();
      await page.waitForLoadState("networkidle").catch(() => {});
      await shot(page, file);
    }
    // Still signed in, the session refreshed silently: a minute before the 65 s token expires,
    // i.e. ~5 s after signing in (the steps above may take less on a quiet machine).
    await page.waitForFunction(
      (first) => (JSON.parse(sessionStorage.getItem("vouch.session") ?? "{}") as { refreshToken?: string }).refreshToken !== first,
      firstRefreshToken,
      { timeout: 15_000 },
    );
    assert.ok(await refreshToken(), "still signed in after the refresh");
    await page.getByRole("link", { name: "Books" }).click();
    await page.getByRole("link", { name: "Browser book" }).waitFor(); // rpcs work with the refreshed token
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL("**/login");
    assert.equal(await refreshToken(), undefined, "logging out forgets the session");
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test("a customer registers, logs in for the first time, sees the 30% voucher appear, and gets a provider code", { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is missing` }, async () => {
  assert.ok(campaignActive, "the admin test created the campaign");
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  try {
    const n = randomInt(1_000_000_000);
    await page.goto(`${edgeUrl}/register`);
    await page.getByRole("heading", { name: "Create an account" }).waitFor();
    await page.getByLabel("Full name").fill("Browser Customer");
    await page.getByLabel("Username").fill(`buyer${n}`);
    await page.getByLabel("Email").fill(`buyer${n}@example.com`);
    await page.getByLabel("Phone number").fill(`+8490${String(randomInt(10_000_000)).padStart(7, "0")}`);
    await page.getByLabel("Password").fill("violet-otter-maps-42");
    await shot(page, "11-register");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("button", { name: "Go to sign in" }).click();
    await page.getByLabel("Username, email or phone number").fill(`buyer${n}@example.com`);
    await page.getByLabel("Password").fill("violet-otter-maps-42");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("Welcome to Vouch!").waitFor();
    const voucher = page.getByTestId("my-voucher").filter({ hasText: "30% off" });
    await voucher.waitFor({ timeout: 30_000 });
    assert.match((await voucher.textContent()) ?? "", /WLC-/);
    await shot(page, "12-my-vouchers");
    await voucher.getByRole("button", { name: "Show QR" }).click();
    await page.getByRole("dialog").getByRole("img").waitFor();
    await shot(page, "13-my-voucher-qr");
    await page.keyboard.press("Escape");

    // A code bought from the provider, delivered on this page through the watch stream.
    await page.getByRole("button", { name: "Request code" }).click();
    await page.getByTestId("code-request").filter({ hasText: "Your code:" }).waitFor({ timeout: 20_000 });
    await shot(page, "14-provider-code");
  } finally {
    await context.close();
  }
});

test("an admin rolls back a customer's redemption with a reason and makes the customer an admin", { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is missing` }, async () => {
  assert.ok(campaignActive, "the admin test created the campaign");
  // The customer, through the edge as a browser would: registers, logs in for the first time
  // (the campaign grants the 30% voucher) and redeems it on an order.
  const transport = createConnectTransport({ baseUrl: edgeUrl });
  const auth = createClient(AuthService, transport);
  const vouchers = createClient(VoucherService, transport);
  const n = randomInt(1_000_000_000);
  const person = { fullName: "Rollback Customer", username: `rollback${n}`, email: `rollback${n}@example.com`, phoneNumber: `+8491${String(randomInt(10_000_000)).padStart(7, "0")}`, password: "amber-heron-lakes-17" };
  await auth.register(person);
  const login = () => auth.login({ identifier: person.username, password: person.password });
  const bearer = { headers: { authorization: `Bearer ${(await login()).accessToken}` } };
  let code = "";
  for (const deadline = Date.now() + 30_000; !code; await new Promise((r) => setTimeout(r, 200))) {
    assert.ok(Date.now() < deadline, "the first-login voucher did not arrive");
    code = (await vouchers.listMyVouchers({}, bearer)).vouchers[0]?.code ?? "";
  }
  const order = { minorUnits: 100_000n, currencyCode: "VND" }; // the campaign's voucher caps its discount in VND
  const orderReference = `browser-order-${n}`;
  await vouchers.redeemVoucher({ code, orderReference, orderAmount: order, requestId: crypto.randomUUID() }, bearer);
  assert.equal((await vouchers.validateVoucher({ code, orderAmount: order }, bearer)).valid, false, "spent");

  const { page, problems } = await signedInAdminPage();
  try {

    await page.getByRole("link", { name: "Redemptions", exact: true }).click();
    await page.getByLabel("Code", { exact: true }).fill(code.toLowerCase());
    await page.getByRole("button", { name: "Search" }).click();
    const row = page.getByRole("row").filter({ hasText: orderReference });
    await row.getByRole("button", { name: "Roll back" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.getByLabel("Reason").fill("order cancelled by the shop");
    await shot(page, "15-rollback-dialog");
    await dialog.getByRole("button", { name: "Roll back" }).click();
    await row.filter({ hasText: "Rolled back (order cancelled by the shop)" }).waitFor();
    await shot(page, "16-rolled-back");
    assert.equal((await vouchers.validateVoucher({ code, orderAmount: order }, bearer)).valid, true, "the use came back");

    await page.getByRole("link", { name: "Users", exact: true }).click();
    await page.getByLabel("Search (name, username, email or phone)").fill(person.username);
    await page.getByRole("button", { name: "Search" }).click();
    const user = page.getByRole("row").filter({ hasText: person.username });
    page.once("dialog", (d) => void d.accept()); // "Make … an administrator?"
    await user.getByRole("button", { name: "Grant admin" }).click();
    await user.filter({ hasText: "ADMIN" }).waitFor();
    await shot(page, "17-granted-admin");
    assert.deepEqual((decodeJwt((await login()).accessToken).roles as string[]).sort(), ["ADMIN", "CUSTOMER"], "the next login carries the role");
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test("an admin searches a book's codes, exports them as CSV, imports a list told which were there, and retries a failed provider request", { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is missing` }, async () => {
  const transport = createConnectTransport({ baseUrl: edgeUrl });
  const auth = createClient(AuthService, transport);
  const adminBearer = { headers: { authorization: `Bearer ${(await auth.login({ identifier: ADMIN.username, password: ADMIN.password })).accessToken}` } };
  // A book of five known codes, through the edge.
  const n = randomInt(1_000_000_000);
  const vouchers = createClient(VoucherService, transport);
  const bookName = `CSV book ${n}`;
  const { book } = await vouchers.createBook({ book: { name: bookName, codePattern: "CSV-****", discount: { kind: { case: "percentOff", value: { basisPoints: 1_000 } } } } }, adminBearer);
  const codes = Array.from({ length: 5 }, (_, i) => `CSV${n}-${i + 1}`);
  await vouchers.importCodes({ bookId: book!.id, codes }, adminBearer);
  // A customer's provider request that the sim fails every time, until it is FAILED.
  const phoneNumber = `+8492${String(randomInt(10_000_000)).padStart(7, "0")}`;
  const customer = { fullName: "Retry Customer", username: `retry${n}`, email: `retry${n}@example.com`, phoneNumber, password: "cobalt-finch-rivers-58" };
  await auth.register(customer);
  const customerBearer = { headers: { authorization: `Bearer ${(await auth.login({ identifier: customer.username, password: customer.password })).accessToken}` } };
  const sim = (behaviour: unknown) => fetch(`${platform.urls["provider-sim"]}/sim/config`, { method: "PUT", body: JSON.stringify(behaviour) }).then((r) => assert.ok(r.ok, "the sim took its config"));
  const fast = { latency: [{ weight: 1, minMs: 100, maxMs: 500 }] };
  await sim({ default: fast, byPhoneNumber: { [phoneNumber]: { errorRate: 1 } } });
  const providers = createClient(ProviderService, transport);
  const { codeRequest } = await providers.requestCode({ phoneNumber, channel: DeliveryChannel.WEB, requestId: crypto.randomUUID() }, customerBearer);
  for (const deadline = Date.now() + 30_000; ; await new Promise((r) => setTimeout(r, 200))) {
    const state = (await providers.getCodeRequest({ codeRequestId: codeRequest!.id }, customerBearer)).codeRequest?.state;
    if (state === CodeRequestState.FAILED) break;
    assert.ok(Date.now() < deadline, `the request did not fail (state ${state})`);
  }
  await sim({ default: fast }); // the provider recovers

  const { page, problems } = await signedInAdminPage();
  try {
    await page.getByRole("link", { name: "Books" }).click();
    await page.getByRole("link", { name: bookName }).click();
    await page.getByRole("heading", { name: bookName }).waitFor();

    // Search by prefix, typed in lower case.
    await page.getByLabel("Search codes by prefix").fill(`csv${n}-3`);
    await page.getByTestId("code-row").filter({ hasText: `CSV${n}-3` }).waitFor();
    await page.waitForFunction((want) => {
      const rows = Array.from(document.querySelectorAll("[data-testid=code-row]"));
      return rows.length > 0 && rows.every((r) => r.textContent?.includes(want));
    }, `CSV${n}-3`);
    assert.equal(await page.getByTestId("code-row").count(), 1, "only the matching code is listed");
    await shot(page, "18-code-search");

    // Export: the download is the book's CSV, every code in it once.
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export CSV" }).click()]);
    const csv = readFileSync((await download.path())!, "utf8");
    const lines = csv.trim().split("\r\n");
    assert.equal(lines[0], "code,state,owner_user_id,assign_time,expire_time,use_count,max_uses");
    assert.deepEqual(lines.slice(1).map((l) => l.split(",")[0]).sort(), [...codes].sort());
    assert.match(download.suggestedFilename(), /^CSV_book_\d+\.csv$/);

    // Import a list with one code already in the book: the others are added, that one is named.
    await page.getByLabel("Codes (one per line, or comma-separated)").fill(`${codes[0]}\nNEW${n}-1, NEW${n}-2`);
    await page.getByRole("button", { name: "Import 3 codes" }).click();
    await page.getByRole("status").filter({ hasText: `Imported 2. Already present: ${codes[0]}.` }).waitFor();
    await shot(page, "19-imported");
    assert.deepEqual((await vouchers.listVouchers({ bookId: book!.id, codePrefix: `NEW${n}` }, adminBearer)).vouchers.map((v) => v.code).sort(), [`NEW${n}-1`, `NEW${n}-2`]);

    // The failed provider request, retried from the console, is delivered.
    await page.getByRole("link", { name: "Provider requests", exact: true }).click();
    await page.getByLabel("State").selectOption({ label: "Failed" });
    const failedRow = page.getByRole("row").filter({ hasText: phoneNumber });
    await failedRow.getByRole("button", { name: "Retry" }).click();
    await page.getByLabel("State").selectOption({ label: "Delivered" });
    await page.getByRole("row").filter({ hasText: phoneNumber }).filter({ hasText: "Delivered" }).waitFor({ timeout: 20_000 });
    await shot(page, "20-provider-retried");
    const { codeRequests } = await providers.listCodeRequests({ pageSize: 100 }, adminBearer);
    const mine = codeRequests.filter((r) => r.phoneNumber === phoneNumber);
    assert.deepEqual(mine.map((r) => r.state).sort(), [CodeRequestState.DELIVERED, CodeRequestState.FAILED].sort(), "the failed request stays failed; its retry is delivered");
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test("a refresh that fails offline or rate limited keeps the session and is retried; a refused refresh token ends it", { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is missing` }, async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  const stored = () => page.evaluate(() => (JSON.parse(sessionStorage.getItem("vouch.session") ?? "{}") as { refreshToken?: string }).refreshToken);
  // What the edge "answers" to RefreshToken; the access tokens of 65 s are refreshed ~5 s after each sign-in or refresh.
  let answer: "offline" | "rate limited" | "real" | "refused" = "offline";
  let attempts = 0;
  const attemptsReach = async (n: number) => {
    const deadline = Date.now() + 20_000;
    while (attempts < n) {
      assert.ok(Date.now() < deadline, `refresh attempt ${n} did not come (${attempts} so far)`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 500)); // the console handles the answer
  };
  try {
    await page.route("**/vouch.auth.v1.AuthService/RefreshToken", async (route) => {
      attempts++;
      const connectError = (status: number, code: string) => route.fulfill({ status, contentType: "application/json", body: JSON.stringify({ code, message: `refresh ${code}` }) });
      if (answer === "offline") return route.abort("internetdisconnected");
      if (answer === "rate limited") return connectError(429, "resource_exhausted");
      if (answer === "refused") return connectError(401, "unauthenticated");
      return route.continue();
    });
    await signInAsAdmin(page);
    const signedIn = await stored();
    assert.ok(signedIn);

    await attemptsReach(1);
    assert.equal(await stored(), signedIn, "offline: still signed in");
    answer = "rate limited";
    await attemptsReach(2);
    assert.equal(await stored(), signedIn, "rate limited: still signed in");
    assert.match(page.url(), /\/dashboard$/);

    answer = "real";
    await page.waitForFunction((first) => (JSON.parse(sessionStorage.getItem("vouch.session") ?? "{}") as { refreshToken?: string }).refreshToken !== first, signedIn, { timeout: 20_000 });
    assert.ok(await stored(), "the retry refreshed the session");

    answer = "refused";
    await page.waitForURL("**/login", { timeout: 20_000 });
    assert.equal(await stored(), undefined, "a refused refresh token ends the session");
  } finally {
    await context.close();
  }
});
