// Real nodes for the browser tests: the `gateway` binary (GATEWAY) on a fresh database
// (DATABASE_URL, migrated and seeded by scripts/lib/console.sh), linked by Redis (REDIS_URL), with
// the WeChat sandbox's settings (SANDBOX_ENV, its hub.env). Nodes can be killed and restarted.
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, openSync } from "node:fs";
import { chromium } from "playwright-core";

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (scripts/test sets it: run the browser tests through it)`);
  return value;
};

export const GATEWAY = need("GATEWAY");
export const SANDBOX = need("SANDBOX_URL");
const logDir = need("CONSOLE_LOG_DIR");
export const SCREENSHOTS = process.env.CONSOLE_SCREENSHOTS || `${logDir}/screenshots`;
mkdirSync(SCREENSHOTS, { recursive: true });

function sandboxEnv() {
  const env = {};
  for (const line of readFileSync(need("SANDBOX_ENV"), "utf8").split("\n")) {
    const match = /^export (\w+)='(.*)'$/.exec(line);
    if (match) env[match[1]] = match[2];
  }
  return env;
}

function nodeEnv(name, port) {
  return {
    ...process.env,
    ...sandboxEnv(),
    HUB_LISTEN: `127.0.0.1:${port}`,
    HUB_NODE_ID: name,
    HUB_DEV_MODE: "true",
    // The browser tests assert what the console shows, not load shedding (which has its own
    // gateway test): a loaded CI machine must not turn a charge into a 503.
    HUB_LEDGER__MAX_QUEUE_MS: "10000",
    HUB_LEDGER__LATENCY_TARGET_MS: "0",
    RUST_LOG: process.env.CONSOLE_RUST_LOG || "warn",
  };
}

async function waitReady(base, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`${base}/readyz`);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`${base} did not become ready`);
}

/** A running node: `base`, `stop()` (SIGKILL: a node lost mid-flight), `start()` again. */
export class Node {
  constructor(name, port) {
    this.name = name;
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    this.child = null;
  }

  async start() {
    const log = openSync(`${logDir}/${this.name}.log`, "a");
    this.child = spawn(GATEWAY, ["serve"], { env: nodeEnv(this.name, this.port), stdio: ["ignore", log, log] });
    this.exited = new Promise((resolve) => this.child.once("exit", resolve));
    await waitReady(this.base);
    return this;
  }

  async kill() {
    if (!this.child) return;
    this.child.kill("SIGKILL");
    await this.exited;
    this.child = null;
  }
}

/** A bearer token minted by `gateway token`. */
export function mint(sub, roles, extra = []) {
  const args = ["token", "--sub", sub, "--ttl", "3600", ...roles.flatMap((role) => ["--role", role]), ...extra];
  return execFileSync(GATEWAY, args, { env: process.env, encoding: "utf8" }).trim().split("\n").pop();
}

/** The API as a test client: JSON in, JSON out, throws on unexpected status. */
export async function call(base, method, path, token, body, expect = [200, 201, 202, 204]) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["Idempotency-Key"] = crypto.randomUUID();
  const response = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (!expect.includes(response.status)) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export async function browser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

/** A fresh page (own cookies and storage) that fails the test on a CSP violation or page error. */
export async function freshPage(instance, base) {
  const context = await instance.newContext({ baseURL: base, acceptDownloads: true, colorScheme: "light" });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (process.env.CONSOLE_DEBUG) console.log("browser:", message.text());
    if (message.type() === "error" && /Content.Security.Policy|Refused to/.test(message.text())) page.problems.push(message.text());
  });
  return page;
}

/** Signs in through the console's dev login as `sub` with `roles`. */
export async function devLogin(page, sub, roles, name = sub) {
  await page.goto("/console/");
  await page.getByTestId("login-sub").fill(sub);
  await page.getByTestId("login-name").fill(name);
  const boxes = page.getByTestId("login-roles").locator("input[type=checkbox]");
  for (let i = 0; i < await boxes.count(); i++) {
    const box = boxes.nth(i);
    await box.setChecked(roles.includes(await box.getAttribute("value")));
  }
  await page.getByTestId("login-dev").click();
  await page.getByTestId("user-name").filter({ hasText: name }).waitFor();
}

export async function shot(page, name) {
  await page.screenshot({ path: `${SCREENSHOTS}/${name}.png`, fullPage: true });
}
