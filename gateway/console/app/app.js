// The console's entry: sign-in, the signed-in frame (who, theme, realtime state, live balance),
// navigation by scope and the hash router. Pages live in page-*.js.

import { api, ApiProblem, setToken, token } from "./api.js";
import { h, mount } from "./dom.js";
import { currentLang, errorText, loadMessages, setLang, t, translateStatic } from "./i18n.js";
import * as realtime from "./realtime.js";

const $ = (id) => document.getElementById(id);

const PAGES = [
  { path: "wallet", scope: (c) => c.can("credits:read") && c.me.account_id, load: () => import("./page-wallet.js") },
  { path: "tasks", scope: (c) => c.can("tasks:create"), load: () => import("./page-tasks.js") },
  { path: "licenses", scope: (c) => c.can("licenses:check"), load: () => import("./page-licenses.js") },
  { path: "dashboard", scope: (c) => c.can("dashboard:read"), load: () => import("./page-dashboard.js") },
  { path: "finance", scope: (c) => c.can("credits:refund") || c.can("reconciliations:read"), load: () => import("./page-finance.js") },
  { path: "audit", scope: (c) => c.can("audit:read"), load: () => import("./page-audit.js") },
  { path: "admin", scope: (c) => c.can("licenses:manage") || c.can("risk:manage"), load: () => import("./page-admin.js") },
];

/** What pages get: the caller, scope checks, error display, the live balance. */
const ctx = {
  me: null,
  can: (scope) => Boolean(ctx.me?.scopes?.includes(scope)),
  showError,
  clearError,
  balance: null,
  setBalance,
};

// ---------------------------------------------------------------------------------------------
// Errors: the problem's code, translated.

let lastError = null;

export function showError(error) {
  lastError = error;
  const code = error instanceof ApiProblem ? error.code : "client_error";
  if (!(error instanceof ApiProblem)) console.error(error);
  $("error-code").textContent = code;
  $("error-text").textContent = errorText(code, error instanceof ApiProblem ? error.title : "");
  $("error").hidden = false;
  if (error instanceof ApiProblem && error.status === 401) signOut(false);
}

/** Hides the error shown; with `only`, just when that error is the one shown. */
function clearError(only) {
  if (only !== undefined && lastError !== only) return;
  lastError = null;
  $("error").hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Theme: from /sessions/me, saved with PUT /sessions/me/theme, applied at once.

function applyTheme(theme) {
  const root = document.documentElement;
  root.dataset.theme = theme.mode;
  root.dataset.density = theme.density;
  if (theme.accent.startsWith("#")) {
    root.dataset.accent = "custom";
    root.style.setProperty("--accent", theme.accent);
  } else {
    root.dataset.accent = theme.accent;
    root.style.removeProperty("--accent");
  }
  $("theme-mode").value = theme.mode;
  $("theme-density").value = theme.density;
  // A #rrggbb accent has no palette entry: the select shows none of them.
  $("theme-accent").value = theme.accent.startsWith("#") ? "" : theme.accent;
}

// Changes made in quick succession build on one another (not on the last saved theme) and are
// saved one after the other, so the server ends with the last one and nothing is undone on screen.
let wantedTheme = null;
let themeSaves = Promise.resolve();

function saveTheme(change) {
  const me = ctx.me;
  const theme = { ...(wantedTheme?.me === me ? wantedTheme.theme : me.theme), ...change };
  const wanted = { me, theme };
  wantedTheme = wanted;
  applyTheme(theme);
  themeSaves = themeSaves.then(async () => {
    try {
      const saved = await api("PUT", "/sessions/me/theme", { body: theme });
      if (ctx.me !== me) return;
      me.theme = saved;
      if (wantedTheme === wanted) applyTheme(saved);
    } catch (error) {
      showError(error);
    }
  });
  return themeSaves;
}

// ---------------------------------------------------------------------------------------------
// Live balance: the bar under the header, from /sessions/me, then `balance.changed`.

function setBalance(balance) {
  if (!balance) return;
  ctx.balance = balance;
  for (const name of ["available", "held", "debt"]) {
    const element = document.querySelector(`[data-testid="balance-${name}"]`);
    if (element) element.textContent = String(balance[name]);
  }
}

function balanceBar() {
  if (!ctx.me.account_id) return null;
  const figure = (name) => h("div", {},
    h("div", { class: "muted", "data-i18n": `balance.${name}` }, t(`balance.${name}`)),
    h("div", { class: "figure", testid: `balance-${name}` }, "0"));
  return h("section", { class: "balances card", "aria-label": "Balance" },
    figure("available"), figure("held"), figure("debt"));
}

async function refreshBalance() {
  if (!ctx.me?.account_id) return;
  try {
    setBalance(await api("GET", "/credits/balance"));
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------------------------------------
// Sign-in and sign-out.

async function devModeAvailable() {
  try {
    const document = await fetch("/api/v1/openapi.json").then((r) => r.json());
    return Boolean(document.paths?.["/api/v1/dev/login"]);
  } catch {
    return false;
  }
}

async function wechatLogin() {
  try {
    const qr = await api("GET", "/auth/wechat/qr", { params: { redirect: "/console/" } });
    location.assign(qr.authorize_url);
  } catch (error) {
    showError(error);
  }
}

async function renderLogin() {
  $("who").hidden = true;
  mount($("nav"));
  const roles = ["user", "creator", "finance", "auditor", "operator", "admin"];
  const devForm = h("form", { class: "card", id: "dev-form", onsubmit: devLogin },
    h("h3", {}, t("login.dev_title")),
    h("label", { class: "field" }, t("login.user_id"), h("input", { name: "sub", value: "demo", required: true, testid: "login-sub" })),
    h("label", { class: "field" }, t("login.name"), h("input", { name: "name", value: "Demo Creator", testid: "login-name" })),
    h("fieldset", { testid: "login-roles" }, h("legend", {}, t("login.roles")),
      roles.map((role) => h("label", {}, h("input", { type: "checkbox", name: "role", value: role, checked: role === "user" || role === "creator" }), ` ${role} `))),
    h("button", { type: "submit", testid: "login-dev" }, t("login.dev")));
  const dev = await devModeAvailable();
  mount($("main"), h("div", { class: "login" },
    h("section", { class: "card" },
      h("h2", {}, t("login.title")),
      h("p", { class: "muted" }, t("login.wechat_hint")),
      h("button", { type: "button", testid: "login-wechat", onclick: wechatLogin }, t("login.wechat"))),
    dev ? devForm : null));
}

async function devLogin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const data = new FormData(form);
  const body = {
    sub: String(data.get("sub")).trim(),
    name: String(data.get("name")).trim() || undefined,
    roles: data.getAll("role").map(String),
    ttl_seconds: 86400,
  };
  try {
    const answer = await api("POST", "/dev/login", { body });
    setToken(answer.token);
    clearError();
    await start();
  } catch (error) {
    showError(error);
  }
}

function signOut(clear = true) {
  setToken(null);
  realtime.disconnect();
  ctx.me = null;
  if (clear) clearError();
  location.hash = "#/";
  renderLogin();
}

// ---------------------------------------------------------------------------------------------
// The signed-in frame and the router.

let cleanup = null;
let currentPath = null;
let frame = null;

async function start() {
  try {
    ctx.me = await api("GET", "/sessions/me");
  } catch (error) {
    showError(error);
    if (!token()) renderLogin();
    return;
  }
  applyTheme(ctx.me.theme);
  $("user-name").textContent = ctx.me.display_name;
  $("user-roles").textContent = ctx.me.roles.join(", ");
  $("who").hidden = false;
  realtime.connect(token);
  const content = h("div", { id: "page" });
  frame = { content };
  mount($("main"), balanceBar(), content);
  setBalance(ctx.me.balance);
  await route();
}

function visiblePages() {
  return PAGES.filter((page) => page.scope(ctx));
}

// Each navigation gets a number; one overtaken by a later one while its page loads stops there,
// so a slow page cannot land over the page navigated to after it.
let routing = 0;

async function route() {
  if (!ctx.me) return;
  const generation = ++routing;
  const pages = visiblePages();
  const [, first, ...rest] = location.hash.replace(/^#/, "").split("/");
  const page = pages.find((p) => p.path === first) ?? pages[0];
  mount($("nav"), pages.map((p) => h("a", {
    href: `#/${p.path}`, class: p === page ? "active" : "", testid: `nav-${p.path}`,
  }, t(`nav.${p.path}`))));
  if (cleanup) cleanup();
  cleanup = null;
  if (page?.path !== currentPath) clearError();
  currentPath = page?.path;
  if (!page) {
    mount(frame.content, h("p", { class: "muted" }, t("nav.nothing")));
    return;
  }
  mount(frame.content, h("p", { class: "muted" }, "…"));
  const module = await page.load();
  if (generation !== routing) return;
  const section = h("div", { testid: `page-${page.path}` });
  mount(frame.content, section);
  const done = (await module.render(section, ctx, rest.map(decodeURIComponent))) ?? null;
  if (generation === routing) cleanup = done;
  else if (done) done();
}

// ---------------------------------------------------------------------------------------------
// Boot.

async function boot() {
  const lang = await loadMessages(new URL("./messages.json", import.meta.url));
  $("lang").value = lang;
  setLang(lang);
  // Back from the WeChat login: the token (or the refusal's code) is in the fragment.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) setToken(fragment.get("token"));
  const loginError = fragment.get("error");
  if (fragment.has("token") || fragment.has("error")) history.replaceState(null, "", `${location.pathname}#/`);

  $("error-close").addEventListener("click", () => clearError());
  $("logout").addEventListener("click", () => signOut());
  $("theme-mode").addEventListener("change", (event) => {
    if (ctx.me) saveTheme({ mode: event.target.value });
    else applyTheme({ mode: event.target.value, density: "comfortable", accent: "ocean" });
  });
  $("theme-accent").addEventListener("change", (event) => {
    if (ctx.me) saveTheme({ accent: event.target.value });
  });
  $("theme-density").addEventListener("change", (event) => {
    if (ctx.me) saveTheme({ density: event.target.value });
  });
  $("lang").addEventListener("change", (event) => {
    setLang(event.target.value);
    if (lastError) showError(lastError);
    if (ctx.me) route();
    else renderLogin();
  });
  realtime.onState((state) => {
    const element = $("realtime-state");
    element.dataset.state = state;
    element.textContent = t(`realtime.${state}`);
  });
  realtime.onPublication((data) => {
    if (data?.type === "balance.changed") setBalance(data);
  });
  realtime.onUnrecovered(() => refreshBalance());
  window.addEventListener("hashchange", () => route().catch(showError));
  translateStatic();
  if (token()) await start();
  else await renderLogin();
  if (loginError) showError(new ApiProblem(400, { code: loginError }));
  document.documentElement.dataset.ready = currentLang();
}

boot().catch(showError);
