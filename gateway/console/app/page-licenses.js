// License check: may the caller (or, with the any scope, a subject) do an action on a resource.

import { api } from "./api.js";
import { fields, h, mount, when } from "./dom.js";
import { t } from "./i18n.js";

export async function render(root, ctx) {
  const result = h("strong", { testid: "license-result" });
  const detail = h("p", { class: "muted" });

  async function check(event) {
    event.preventDefault();
    ctx.clearError();
    const { resource, action, subject_id } = fields(event.currentTarget);
    try {
      const answer = await api("GET", "/licenses/check", { params: { resource, action, subject_id } });
      result.textContent = answer.allowed ? "allowed" : answer.violation_code;
      result.className = answer.allowed ? "allowed" : "denied";
      detail.textContent = answer.allowed
        ? t("licenses.allowed_detail", {
          license: answer.license_id ?? "",
          quota: answer.remaining_quota ?? t("licenses.unlimited"),
          until: answer.valid_until ? when(answer.valid_until) : t("licenses.no_end"),
        })
        : t(`violation.${answer.violation_code}`);
    } catch (error) {
      result.textContent = "";
      detail.textContent = "";
      ctx.showError(error);
    }
  }

  mount(root, h("section", { class: "card" },
    h("h2", {}, t("licenses.check_title")),
    h("form", { class: "inline", onsubmit: check },
      h("label", { class: "field" }, t("licenses.resource"), h("input", { name: "resource", value: "model:portrait-v2", required: true, testid: "license-resource" })),
      h("label", { class: "field" }, t("licenses.action"), h("input", { name: "action", value: "generate", required: true, testid: "license-action" })),
      ctx.can("licenses:check:any")
        ? h("label", { class: "field" }, t("licenses.subject"), h("input", { name: "subject_id", placeholder: ctx.me.user_id, testid: "license-subject" }))
        : null,
      h("button", { type: "submit", testid: "license-check" }, t("licenses.check"))),
    h("p", {}, t("licenses.result"), " ", result),
    detail));
  return null;
}
