// The console in a real browser (Debian's chromium through playwright-core) against real nodes:
// every row of spec/console.md's table, through the console's stable `data-testid` hooks. Two
// nodes share PostgreSQL and Redis; the browser talks to node A, the "backend service" and the
// sandbox's payment notifications go through the API as they would in production.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { browser, call, devLogin, freshPage, mint, Node, SANDBOX, shot } from "./harness.mjs";

const A = new Node("console-a", Number(process.env.CONSOLE_PORT_A || 18211));
const B = new Node("console-b", Number(process.env.CONSOLE_PORT_B || 18212));
let chromium;
const service = () => mint("renderer", ["service"]);
/** Ids unique to this run, so the tests also pass against a database they ran on before. */
const RUN = Date.now().toString(36);

before(async () => {
  await Promise.all([A.start(), B.start()]);
  chromium = await browser();
});

after(async () => {
  await chromium?.close();
  await Promise.all([A.kill(), B.kill()]);
});

async function balance(page) {
  const read = async (name) => Number(await page.getByTestId(`balance-${name}`).textContent());
  return { available: await read("available"), held: await read("held"), debt: await read("debt") };
}

async function expectText(locator, expected, timeout = 15000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = (await locator.textContent())?.trim();
    if (typeof expected === "function" ? expected(last) : last === expected) return last;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const page = locator.page();
  const shown = await page.locator("#error").isVisible() ? await page.locator("#error").textContent() : "none";
  assert.fail(`expected ${expected} in ${locator}, last saw ${JSON.stringify(last)}; error shown: ${shown}`);
}

/** Creates a task in the form, waits for its row: its id (from the creation's own answer, not
 * guessed from the list, which may still be loading the user's earlier tasks). */
async function createTask(page) {
  const created = page.waitForResponse(
    (response) => response.request().method() === "POST" && new URL(response.url()).pathname === "/api/v1/tasks",
  );
  await page.getByTestId("task-create").click();
  const response = await created;
  assert.equal(response.status(), 201, "the task is created");
  const taskId = (await response.json()).id;
  await page.locator(`[data-testid=task-row][data-task-id="${taskId}"]`).waitFor({ timeout: 15000 });
  return taskId;
}

async function openTask(page, taskId) {
  await page.locator(`[data-testid=task-row][data-task-id="${taskId}"] a`).click();
  await page.locator(`[data-testid=task-detail][data-task-id="${taskId}"]`).waitFor();
}

function assertNoProblems(page) {
  assert.deepEqual(page.problems, [], "no CSP violation or page error");
}

test("the console is served with its content types, cache headers and CSP", async () => {
  const index = await fetch(`${A.base}/console/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get("content-type"), /^text\/html/);
  assert.equal(index.headers.get("cache-control"), "no-cache");
  const csp = index.headers.get("content-security-policy");
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
  const html = await index.text();
  const app = /src="(\/console\/assets\/[0-9a-f]{16}\/app\.js)"/.exec(html)?.[1];
  assert.ok(app, "index.html names the versioned app.js");
  const script = await fetch(`${A.base}${app}`);
  assert.equal(script.status, 200);
  assert.match(script.headers.get("content-type"), /^text\/javascript/);
  assert.match(script.headers.get("cache-control"), /immutable/);
  const css = await fetch(`${A.base}${app.replace("app.js", "style.css")}`);
  assert.match(css.headers.get("content-type"), /^text\/css/);
  const missing = await fetch(`${A.base}${app.replace("app.js", "nope.js")}`);
  assert.equal(missing.status, 404);
  assert.match(missing.headers.get("content-type"), /problem\+json/);
  const demo = await fetch(`${A.base}/demo`, { redirect: "manual" });
  assert.equal(demo.status, 308);
  assert.equal(demo.headers.get("location"), "/console/");
});

test("sign in (dev login), who is shown, sign out", async () => {
  const page = await freshPage(chromium, A.base);
  await page.goto("/console/");
  await page.getByTestId("login-wechat").waitFor();
  await shot(page, "01-sign-in");
  await devLogin(page, "demo", ["user", "creator"], "Demo Creator");
  assert.equal(await page.getByTestId("user-roles").textContent(), "user, creator");
  await expectText(page.getByTestId("realtime-state"), "connected");
  await page.getByTestId("logout").click();
  await page.getByTestId("login-dev").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("console.token")), null);
  assertNoProblems(page);
  await page.context().close();
});

test("sign in with WeChat through the sandbox's QR login", async () => {
  const page = await freshPage(chromium, A.base);
  await page.goto("/console/");
  await page.getByTestId("login-wechat").click();
  await page.waitForURL(`${SANDBOX}/connect/qrconnect**`);
  await shot(page, "02-wechat-sandbox-login");
  await page.locator("input[name=nickname]").fill("Console Tester");
  await page.getByRole("button", { name: "Approve" }).click();
  await page.waitForURL(`${A.base}/console/**`);
  await expectText(page.getByTestId("user-name"), "Console Tester");
  assert.equal(await page.getByTestId("user-roles").textContent(), "user");
  await expectText(page.getByTestId("balance-available"), (text) => /^\d+$/.test(text ?? ""));
  assert.ok(!(await page.url()).includes("token="), "the token leaves the address bar");
  assertNoProblems(page);
  await page.context().close();
});

test("balance and a charge, live; a license check allowed and refused", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, `charger-${RUN}`, ["user"], "Charger");
  const admin = mint("admin-console", ["admin"]);
  await call(A.base, "POST", "/api/v1/credits/adjust", admin, { account_id: `charger-${RUN}`, amount: 500, reason: "console test" });
  await expectText(page.getByTestId("balance-available"), "500");
  await page.getByTestId("nav-wallet").click();
  await page.getByTestId("charge-amount").fill("40");
  // A careless double click sends one charge.
  await page.getByTestId("charge-submit").dblclick();
  await expectText(page.getByTestId("balance-available"), "460");
  await new Promise((resolve) => setTimeout(resolve, 500));
  const ledger = await call(A.base, "GET", "/api/v1/credits/ledger", mint(`charger-${RUN}`, ["user"]));
  assert.equal(ledger.items.filter((entry) => entry.kind === "charge").length, 1, "one charge for a double click");
  assert.equal(await page.getByTestId("balance-available").textContent(), "460");
  await expectText(page.getByTestId("charge-result"), (text) => text.includes("40"));
  await page.getByTestId("ledger-row").first().waitFor();
  await shot(page, "03-wallet");

  await call(A.base, "POST", "/api/v1/licenses", admin, { subject_id: `charger-${RUN}`, resource: "model:portrait-v2", actions: ["generate"], quota_total: 5 });
  await page.getByTestId("nav-licenses").click();
  await page.getByTestId("license-resource").fill("model:portrait-v2");
  await page.getByTestId("license-action").fill("generate");
  await page.getByTestId("license-check").click();
  await expectText(page.getByTestId("license-result"), "allowed");
  await page.getByTestId("license-action").fill("commercial");
  await page.getByTestId("license-check").click();
  await expectText(page.getByTestId("license-result"), "action_not_permitted");
  await page.getByTestId("license-resource").fill("model:landscape-xl");
  await page.getByTestId("license-check").click();
  await expectText(page.getByTestId("license-result"), "license_not_found");
  await shot(page, "04-license-check");
  assertNoProblems(page);
  await page.context().close();
});

test("a task created with a live estimate and followed live to success, the balance moving", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "demo", ["user", "creator"], "Demo Creator");
  await page.getByTestId("nav-tasks").click();
  await page.getByTestId("task-type").fill("render");
  await page.getByTestId("task-units").fill("4");
  const user = mint("demo", ["user", "creator"]);
  const { estimated_credits: estimate } = await call(A.base, "POST", "/api/v1/credits/estimate", user, { task_type: "render", units: 4 });
  assert.ok(estimate > 0);
  await expectText(page.getByTestId("task-estimate"), String(estimate));
  const before = await balance(page);
  const taskId = await createTask(page);
  await expectText(page.getByTestId("balance-held"), String(before.held + estimate));
  await openTask(page, taskId);
  await expectText(page.getByTestId("task-status"), "queued");

  const worker = service();
  const post = (body) => call(B.base, "POST", `/api/v1/tasks/${taskId}/events`, worker, body);
  await post({ kind: "state", state: "running" });
  await expectText(page.getByTestId("task-status"), "running");
  await post({ kind: "progress", progress: 60, message: "frames 1-60" });
  await page.locator('[data-testid=task-progress][aria-valuenow="60"]').waitFor();
  await shot(page, "05-task-running");
  await post({ kind: "state", state: "succeeded", actual_units: 2 });
  await expectText(page.getByTestId("task-status"), "succeeded");
  await page.locator('[data-testid=task-progress][aria-valuenow="100"]').waitFor();
  await expectText(page.getByTestId("balance-held"), String(before.held));
  const task = await call(A.base, "GET", `/api/v1/tasks/${taskId}`, worker);
  await expectText(page.getByTestId("balance-available"), String(before.available - task.actual_cost));
  assert.ok(await page.getByTestId("task-event").count() >= 4, "the history shows created, running, progress, succeeded");
  assertNoProblems(page);
  await page.context().close();
});

test("a recharge paid in the sandbox turns the page to paid by itself", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "payer", ["user"], "Payer");
  await page.getByTestId("nav-wallet").click();
  const payer = mint("payer", ["user"]);
  const { available: before } = await call(A.base, "GET", "/api/v1/credits/balance", payer);
  await page.getByTestId("recharge-amount").fill("12.30");
  await page.getByTestId("recharge-submit").click();
  await expectText(page.getByTestId("recharge-status"), "pending");
  const qr = page.getByTestId("recharge-qr").locator("img");
  await qr.waitFor();
  assert.match(await qr.getAttribute("src"), /^data:image\/svg\+xml/);
  const codeUrl = await page.getByTestId("recharge-code-url").textContent();
  assert.match(codeUrl, /^weixin:\/\/wxpay\//);
  await shot(page, "06-recharge-qr");
  const orders = await call(A.base, "GET", "/api/v1/payments/orders", payer);
  const order = orders.items.find((o) => o.code_url === codeUrl);
  assert.ok(order, "the order shown is the user's pending order");
  const paid = await fetch(`${SANDBOX}/sandbox/pay/${order.out_trade_no}`, { method: "POST" });
  assert.equal(paid.status, 200, await paid.text());
  await expectText(page.getByTestId("recharge-status"), "paid", 30000);
  await expectText(page.getByTestId("balance-available"), String(before + order.credits));
  await shot(page, "07-recharge-paid");
  assertNoProblems(page);
  await page.context().close();
});

test("the creator dashboard shows tasks by state and a chart", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "demo", ["user", "creator"], "Demo Creator");
  await page.getByTestId("nav-dashboard").click();
  const total = Number(await expectText(page.getByTestId("dashboard-tasks-total"), (text) => /^\d+$/.test(text ?? "")));
  assert.ok(total >= 1, "the task of the earlier test counts");
  assert.ok(await page.getByTestId("dashboard-chart").locator("svg rect").count() >= 2);
  await page.getByTestId("dashboard-top-type").first().waitFor();
  await shot(page, "08-dashboard");
  assertNoProblems(page);
  await page.context().close();
});

test("finance refunds a charge with a reason", async () => {
  const user = mint(`refundee-${RUN}`, ["user"]);
  const admin = mint("admin-console", ["admin"]);
  await call(A.base, "GET", "/api/v1/credits/balance", user); // the user's first request creates the account
  await call(A.base, "POST", "/api/v1/credits/adjust", admin, { account_id: `refundee-${RUN}`, amount: 300, reason: "console test" });
  const charge = await call(A.base, "POST", "/api/v1/credits/charge", user, { amount: 120, reason: "to refund" });
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "fin-console", ["finance"], "Finance");
  await page.getByTestId("nav-finance").click();
  await page.getByTestId("finance-account").fill(`refundee-${RUN}`);
  await page.getByTestId("finance-account-show").click();
  await page.locator(`[data-testid=finance-ledger-row][data-entry-id="${charge.entry_id}"] [data-testid=refund-pick]`).click();
  await page.getByTestId("refund-amount").fill("50");
  await page.getByTestId("refund-reason").fill("customer complaint");
  await page.getByTestId("refund-submit").click();
  await expectText(page.getByTestId("refund-result"), (text) => text.includes("50"));
  await page.locator("[data-testid=finance-ledger-row][data-kind=refund]").first().waitFor();
  await shot(page, "09-finance");
  const balanceNow = await call(A.base, "GET", "/api/v1/credits/balance", user);
  assert.equal(balanceNow.available, 300 - 120 + 50);
  assertNoProblems(page);
  await page.context().close();
});

test("an auditor searches the access log and exports it", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "auditor-console", ["auditor"], "Auditor");
  await page.getByTestId("nav-audit").click();
  await page.getByTestId("audit-action").fill("credits.refund");
  await page.getByTestId("audit-search").click();
  // The page opens with every row; the filtered answer replaces them.
  const others = page.locator("[data-testid=audit-row]:not([data-action='credits.refund'])");
  const deadline = Date.now() + 15000;
  while ((await others.count()) > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(await others.count(), 0, "only the filtered action");
  await page.locator("[data-testid=audit-row][data-action='credits.refund']").first().waitFor();
  await shot(page, "10-audit");
  await page.getByTestId("export-kind").selectOption("access_logs");
  await page.getByTestId("export-format").selectOption("ndjson");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("export-submit").click()]);
  const lines = readFileSync(await download.path(), "utf8").trim().split("\n");
  assert.ok(lines.length >= 1);
  assert.ok(lines.every((line) => typeof JSON.parse(line) === "object"));
  assert.ok(lines.some((line) => JSON.parse(line).action === "credits.refund"));
  await expectText(page.getByTestId("export-status"), (text) => text.includes(".ndjson"));
  assertNoProblems(page);
  await page.context().close();
});

test("an admin revokes a license and the user's check says so", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "admin-console", ["admin"], "Admin");
  await page.getByTestId("nav-admin").click();
  await page.getByTestId("grant-subject").fill(`licensee-${RUN}`);
  await page.getByTestId("grant-resource").fill("model:voice-v1");
  await page.getByTestId("grant-actions").fill("generate");
  await page.getByTestId("grant-quota").fill("10");
  await page.getByTestId("grant-submit").click();
  await expectText(page.getByTestId("license-status"), "active");
  const user = mint(`licensee-${RUN}`, ["user"]);
  const allowed = await call(A.base, "GET", "/api/v1/licenses/check?resource=model:voice-v1&action=generate", user);
  assert.equal(allowed.allowed, true);
  await page.getByTestId("license-quota").fill("20");
  await page.getByTestId("license-quota-save").click();
  await expectText(page.getByTestId("license-terms"), (text) => text.includes("20"));
  await page.getByTestId("license-revoke").click();
  await expectText(page.getByTestId("license-status"), "revoked");
  await shot(page, "11-admin");
  const refused = await call(A.base, "GET", "/api/v1/licenses/check?resource=model:voice-v1&action=generate", user);
  assert.equal(refused.allowed, false);
  assert.equal(refused.violation_code, "license_revoked");
  assertNoProblems(page);
  await page.context().close();
});

test("the theme switch applies at once and is kept by the server", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "themer", ["user"], "Themer");
  const marker = await page.evaluate(() => (window.__marker = Math.random()));
  await page.getByTestId("theme-mode").selectOption("dark");
  await page.locator("html[data-theme=dark]").waitFor();
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(background, "rgb(20, 23, 27)", "dark colours applied");
  assert.equal(await page.evaluate(() => window.__marker), marker, "no reload");
  await shot(page, "12-dark-theme");
  // Two changes in quick succession: both kept, on screen and on the server, in that order.
  const saved = page.waitForResponse(
    (response) => response.url().endsWith("/sessions/me/theme") && response.request().postData()?.includes("creator"),
  );
  await page.getByTestId("theme-density").selectOption("compact");
  await page.getByTestId("theme-accent").selectOption("creator");
  await page.locator("html[data-density=compact][data-accent=creator]").waitFor();
  await saved;
  assert.equal(await page.evaluate(() => window.__marker), marker, "still no reload");
  const me = await call(A.base, "GET", "/api/v1/sessions/me", mint("themer", ["user"]));
  assert.deepEqual(me.theme, { mode: "dark", accent: "creator", density: "compact" });
  assert.equal(await page.locator("html").getAttribute("data-density"), "compact", "nothing undone");
  await page.reload();
  await page.locator("html[data-theme=dark]").waitFor();
  await page.getByTestId("theme-mode").selectOption("light");
  await page.locator("html[data-theme=light]").waitFor();
  assertNoProblems(page);
  await page.context().close();
});

test("a dropped realtime connection shows reconnecting and recovers the events it missed", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "demo", ["user", "creator"], "Demo Creator");
  await page.getByTestId("nav-tasks").click();
  await page.getByTestId("task-units").fill("1");
  const taskId = await createTask(page);
  await openTask(page, taskId);
  await expectText(page.getByTestId("realtime-state"), "connected");

  await A.kill();
  await expectText(page.getByTestId("realtime-state"), (state) => state === "connecting" || state === "disconnected");
  await shot(page, "13-reconnecting");
  const worker = service();
  await call(B.base, "POST", `/api/v1/tasks/${taskId}/events`, worker, { kind: "state", state: "running" });
  await call(B.base, "POST", `/api/v1/tasks/${taskId}/events`, worker, { kind: "progress", progress: 40 });
  await call(B.base, "POST", `/api/v1/tasks/${taskId}/events`, worker, { kind: "progress", progress: 80 });
  await A.start();
  await expectText(page.getByTestId("realtime-state"), "connected", 30000);
  await page.locator('[data-testid=task-progress][aria-valuenow="80"]').waitFor({ timeout: 15000 });
  await expectText(page.getByTestId("task-status"), "running");
  const seqs = await page.getByTestId("task-event").evaluateAll((rows) => rows.map((r) => Number(r.dataset.seq)));
  assert.deepEqual(seqs, [1, 2, 3, 4], "every event once, in order");
  await call(B.base, "POST", `/api/v1/tasks/${taskId}/events`, worker, { kind: "state", state: "succeeded", actual_units: 1 });
  await expectText(page.getByTestId("task-status"), "succeeded");
  assertNoProblems(page);
  await page.context().close();
});

test("a failure is shown by its code, in English and in Chinese", async () => {
  const page = await freshPage(chromium, A.base);
  await devLogin(page, "pauper", ["user"], "Pauper");
  await page.getByTestId("nav-tasks").click();
  const estimated = page.waitForResponse(
    (response) => new URL(response.url()).pathname === "/api/v1/credits/estimate" && response.request().postData()?.includes("1000"),
  );
  await page.getByTestId("task-units").fill("1000");
  await page.getByTestId("task-create").click();
  await expectText(page.getByTestId("error-code"), "insufficient_credits");
  assert.match(await page.locator("#error-text").textContent(), /Not enough credits/);
  // The form's debounced estimate lands after the refusal and leaves it on screen.
  await estimated;
  await page.waitForTimeout(100);
  assert.equal(await page.locator("#error").isVisible(), true, "the refusal is still shown");
  await page.getByTestId("lang").selectOption("zh");
  await expectText(page.locator("#error-text"), (text) => text.includes("积分不足"));
  await page.getByTestId("nav-wallet").click();
  await page.locator("#error").waitFor({ state: "hidden" });
  await page.getByTestId("charge-amount").fill("5");
  await page.getByTestId("charge-submit").click();
  await expectText(page.getByTestId("error-code"), "insufficient_credits");
  assert.match(await page.locator("#error-text").textContent(), /积分不足/);
  assert.equal(await page.locator("#error").textContent().then((text) => text.includes("{")), false, "no raw JSON");
  await shot(page, "14-error-zh");
  assertNoProblems(page);
  await page.context().close();
});
