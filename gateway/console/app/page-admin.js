// Admin: licenses (grant, look up, suspend, resume, revoke, change quota) and recharge risk blocks.

import { api } from "./api.js";
import { fields, h, mount, table, when } from "./dom.js";
import { t } from "./i18n.js";

export async function render(root, ctx) {
  const license = h("div", { testid: "license-panel" });
  const blocks = h("div");

  function showLicense(value) {
    const quota = h("input", { name: "quota_total", type: "number", min: "0", value: value.quota_total ?? "", testid: "license-quota" });
    const patch = async (body) => {
      ctx.clearError();
      try {
        showLicense(await api("PATCH", `/licenses/${encodeURIComponent(value.id)}`, { body }));
      } catch (error) {
        ctx.showError(error);
      }
    };
    mount(license, h("div", { class: "card", testid: "license", "data-license-id": value.id },
      h("p", {}, h("code", { testid: "license-id" }, value.id), " · ",
        h("strong", { testid: "license-status", class: value.status === "active" ? "allowed" : "denied" }, value.status)),
      h("p", { class: "muted", testid: "license-terms" }, t("admin.license_line", {
        subject: value.subject_id, resource: value.resource, actions: value.actions.join(", "),
        used: value.quota_used, total: value.quota_total ?? "∞", until: value.valid_until ? when(value.valid_until) : "—",
      })),
      h("div", { class: "row" },
        h("button", { type: "button", testid: "license-suspend", disabled: value.status !== "active", onclick: () => patch({ status: "suspended" }) }, t("admin.suspend")),
        h("button", { type: "button", testid: "license-resume", disabled: value.status !== "suspended", onclick: () => patch({ status: "active" }) }, t("admin.resume")),
        h("button", { type: "button", testid: "license-revoke", disabled: value.status === "revoked", onclick: () => patch({ status: "revoked" }) }, t("admin.revoke")),
        h("label", { class: "field" }, t("admin.quota"), quota),
        h("button", { type: "button", class: "secondary", testid: "license-quota-save", onclick: () =>
          patch({ quota_total: quota.value === "" ? null : Number(quota.value) }) }, t("admin.save_quota")))));
  }

  async function grant(event) {
    event.preventDefault();
    ctx.clearError();
    const data = fields(event.currentTarget);
    try {
      showLicense(await api("POST", "/licenses", { body: {
        subject_id: data.subject_id,
        resource: data.resource,
        actions: data.actions.split(",").map((a) => a.trim()).filter(Boolean),
        quota_total: data.quota_total === "" ? undefined : Number(data.quota_total),
      } }));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function lookup(event) {
    event.preventDefault();
    ctx.clearError();
    try {
      showLicense(await api("GET", `/licenses/${encodeURIComponent(fields(event.currentTarget).id)}`));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function loadBlocks() {
    try {
      const answer = await api("GET", "/risk/blocks");
      const items = answer.items ?? answer;
      mount(blocks, table([
        [t("admin.block_kind"), (b) => b.kind],
        [t("admin.block_value"), (b) => b.value],
        [t("admin.reason"), (b) => b.reason],
        [t("admin.by"), (b) => b.created_by],
        [t("admin.expires"), (b) => (b.expires_at ? when(b.expires_at) : "—")],
        ["", (b) => h("button", { type: "button", class: "secondary", testid: "block-remove", onclick: async () => {
          try {
            await api("DELETE", `/risk/blocks/${encodeURIComponent(b.id)}`);
            await loadBlocks();
          } catch (error) {
            ctx.showError(error);
          }
        } }, t("admin.unblock"))],
      ], items, (b) => ({ testid: "block-row", "data-value": b.value })));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function block(event) {
    event.preventDefault();
    ctx.clearError();
    const data = fields(event.currentTarget);
    try {
      await api("POST", "/risk/blocks", { body: {
        kind: data.kind, value: data.value, reason: data.reason,
        expires_at: data.expires_at ? new Date(data.expires_at).toISOString() : undefined,
      } });
      event.currentTarget?.reset?.();
      await loadBlocks();
    } catch (error) {
      ctx.showError(error);
    }
  }

  mount(root,
    ctx.can("licenses:manage") ? h("section", { class: "card" }, h("h2", {}, t("admin.licenses")),
      h("form", { class: "inline", onsubmit: grant },
        h("label", { class: "field" }, t("admin.subject"), h("input", { name: "subject_id", required: true, testid: "grant-subject" })),
        h("label", { class: "field" }, t("licenses.resource"), h("input", { name: "resource", required: true, testid: "grant-resource" })),
        h("label", { class: "field" }, t("admin.actions"), h("input", { name: "actions", value: "generate", required: true, testid: "grant-actions" })),
        h("label", { class: "field" }, t("admin.quota"), h("input", { name: "quota_total", type: "number", min: "0", testid: "grant-quota" })),
        h("button", { type: "submit", testid: "grant-submit" }, t("admin.grant"))),
      h("form", { class: "inline", onsubmit: lookup },
        h("label", { class: "field" }, t("admin.license_id"), h("input", { name: "id", required: true, testid: "license-lookup-id" })),
        h("button", { type: "submit", class: "secondary", testid: "license-lookup" }, t("common.show"))),
      license) : null,
    ctx.can("risk:manage") ? h("section", { class: "card" }, h("h2", {}, t("admin.blocks")),
      h("form", { class: "inline", onsubmit: block },
        h("label", { class: "field" }, t("admin.block_kind"), h("select", { name: "kind", testid: "block-kind" }, ["user", "ip", "openid"].map((k) => h("option", { value: k }, k)))),
        h("label", { class: "field" }, t("admin.block_value"), h("input", { name: "value", required: true, testid: "block-value" })),
        h("label", { class: "field" }, t("admin.reason"), h("input", { name: "reason", required: true, testid: "block-reason" })),
        h("label", { class: "field" }, t("admin.expires"), h("input", { name: "expires_at", type: "datetime-local" })),
        h("button", { type: "submit", testid: "block-submit" }, t("admin.block"))),
      blocks) : null);
  if (ctx.can("risk:manage")) await loadBlocks();
  return null;
}
