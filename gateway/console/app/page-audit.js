// Audit: access-log search with filters and paging, task and account trails, and exports
// (NDJSON or CSV, downloaded with the bearer token and saved by the browser).

import { api, ApiProblem, token } from "./api.js";
import { fields, h, mount, table, when } from "./dom.js";
import { t } from "./i18n.js";

const KINDS = ["access_logs", "ledger", "tasks", "task_history", "task_audit", "authorizations", "authorization_logs", "payments", "reconciliations"];

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

const iso = (value) => (value ? new Date(value).toISOString() : undefined);

export async function render(root, ctx) {
  const results = h("div");
  const trail = h("div");
  const exportStatus = h("p", { class: "muted", testid: "export-status" });
  let filters = {};
  let cursors = [];

  async function search(cursor) {
    try {
      const page = await api("GET", "/audit/access-logs", { params: { ...filters, limit: 50, cursor } });
      mount(results,
        h("p", { class: "muted", testid: "audit-count" }, t("audit.shown", { n: page.items.length })),
        table([
          [t("audit.when"), (r) => when(r.created_at)],
          [t("audit.actor"), (r) => `${r.actor_id} (${r.actor_roles.join(",")})`],
          [t("audit.action"), (r) => r.action],
          [t("audit.target"), (r) => [r.target_type, r.target_id].filter(Boolean).join(" ")],
          [t("audit.outcome"), (r) => h("span", { class: r.outcome === "success" ? "allowed" : "denied" }, r.outcome)],
          [t("audit.ip"), (r) => r.client_ip ?? ""],
        ], page.items, (r) => ({ testid: "audit-row", "data-action": r.action })),
        h("div", { class: "row pager" },
          h("button", { class: "secondary", disabled: cursors.length === 0, onclick: () => { cursors = []; search(); } }, t("page.first")),
          h("button", { class: "secondary", disabled: !page.next_cursor, testid: "audit-next",
            onclick: () => { cursors.push(cursor); search(page.next_cursor); } }, t("page.next"))));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function showTrail(event) {
    event.preventDefault();
    ctx.clearError();
    const { kind, id } = fields(event.currentTarget);
    try {
      const path = kind === "task" ? `/audit/tasks/${encodeURIComponent(id)}/trail` : `/audit/accounts/${encodeURIComponent(id)}/trail`;
      const answer = await api("GET", path);
      mount(trail, table([
        [t("audit.when"), (e) => when(e.at)],
        [t("audit.source"), (e) => e.source],
        [t("audit.data"), (e) => h("pre", {}, JSON.stringify(e.data))],
      ], answer.events, (e) => ({ testid: "trail-row", "data-source": e.source })));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function exportRows(event) {
    event.preventDefault();
    ctx.clearError();
    const data = fields(event.currentTarget);
    exportStatus.textContent = t("audit.exporting");
    const params = new URLSearchParams({ kind: data.kind, from: iso(data.from), to: iso(data.to), format: data.format });
    try {
      const response = await fetch(`/api/v1/audit/export?${params}`, { headers: { Authorization: `Bearer ${token()}` } });
      if (!response.ok) {
        const problem = await response.json().catch(() => null);
        throw new ApiProblem(response.status, problem);
      }
      const blob = await response.blob();
      const name = `${data.kind}-${data.from.slice(0, 10)}.${data.format === "csv" ? "csv" : "ndjson"}`;
      const link = h("a", { href: URL.createObjectURL(blob), download: name, testid: "export-link" }, name);
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
      exportStatus.textContent = t("audit.exported", { name, bytes: blob.size });
    } catch (error) {
      exportStatus.textContent = "";
      ctx.showError(error);
    }
  }

  const now = new Date();
  const dayAgo = new Date(now.getTime() - 86400000);
  mount(root,
    h("section", { class: "card" }, h("h2", {}, t("audit.search")),
      h("form", { class: "inline", testid: "audit-filters", onsubmit: (event) => {
        event.preventDefault();
        const data = fields(event.currentTarget);
        filters = { ...data, from: iso(data.from), to: iso(data.to) };
        cursors = [];
        search();
      } },
        ["actor_id", "action", "target_type", "target_id"].map((name) =>
          h("label", { class: "field" }, t(`audit.${name}`), h("input", { name, testid: `audit-${name.replace("_", "-")}` }))),
        h("label", { class: "field" }, t("audit.outcome"),
          h("select", { name: "outcome", testid: "audit-outcome" }, ["", "success", "denied", "failure"].map((o) => h("option", { value: o }, o || t("common.any"))))),
        h("label", { class: "field" }, t("audit.from"), h("input", { name: "from", type: "datetime-local" })),
        h("label", { class: "field" }, t("audit.to"), h("input", { name: "to", type: "datetime-local" })),
        h("button", { type: "submit", testid: "audit-search" }, t("audit.search_button"))),
      results),
    h("section", { class: "card" }, h("h2", {}, t("audit.trails")),
      h("form", { class: "inline", onsubmit: showTrail },
        h("label", { class: "field" }, t("audit.trail_of"), h("select", { name: "kind", testid: "trail-kind" },
          h("option", { value: "task" }, t("audit.task")), h("option", { value: "account" }, t("audit.account")))),
        h("label", { class: "field" }, t("audit.id"), h("input", { name: "id", required: true, testid: "trail-id" })),
        h("button", { type: "submit", testid: "trail-show" }, t("common.show"))),
      trail),
    ctx.can("audit:export") ? h("section", { class: "card" }, h("h2", {}, t("audit.export")),
      h("form", { class: "inline", onsubmit: exportRows },
        h("label", { class: "field" }, t("audit.kind"), h("select", { name: "kind", testid: "export-kind" },
          KINDS.filter((k) => ctx.can("audit:export:all") || ["ledger", "payments", "reconciliations"].includes(k)).map((k) => h("option", { value: k }, k)))),
        h("label", { class: "field" }, t("audit.from"), h("input", { name: "from", type: "datetime-local", value: localInput(dayAgo), required: true, testid: "export-from" })),
        h("label", { class: "field" }, t("audit.to"), h("input", { name: "to", type: "datetime-local", value: localInput(new Date(now.getTime() + 3600000)), required: true, testid: "export-to" })),
        h("label", { class: "field" }, t("audit.format"), h("select", { name: "format", testid: "export-format" },
          h("option", { value: "ndjson" }, "NDJSON"), h("option", { value: "csv" }, "CSV"))),
        h("button", { type: "submit", testid: "export-submit" }, t("audit.download"))),
      exportStatus) : null);
  await search();
  return null;
}
