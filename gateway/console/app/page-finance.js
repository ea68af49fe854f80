// Finance: payment orders, an account's ledger with refunds of its charges (with a reason),
// adjustments, and the reconciliation runs with their flagged items.

import { api } from "./api.js";
import { fields, h, mount, table, when } from "./dom.js";
import { t } from "./i18n.js";

export async function render(root, ctx) {
  const orders = h("div");
  const ledger = h("div");
  const runs = h("div");
  const refundResult = h("p", { class: "muted", testid: "refund-result" });
  const adjustResult = h("p", { class: "muted", testid: "adjust-result" });
  let account = "";

  async function loadOrders(status) {
    try {
      const page = await api("GET", "/payments/orders", { params: { status, limit: 50 } });
      mount(orders, table([
        [t("orders.no"), (o) => o.out_trade_no],
        [t("orders.user"), (o) => o.user_id],
        [t("orders.yuan"), (o) => (o.amount_fen / 100).toFixed(2), "num"],
        [t("orders.credits"), (o) => String(o.credits), "num"],
        [t("orders.status"), (o) => h("span", { class: `status-${o.status}` }, o.status)],
        [t("orders.created"), (o) => when(o.created_at)],
      ], page.items, (o) => ({ testid: "order-row", "data-order-id": o.order_id })));
    } catch (error) {
      ctx.showError(error);
    }
  }

  const refundForm = h("form", { class: "inline", onsubmit: refund },
    h("label", { class: "field" }, t("finance.charge_entry"), h("input", { name: "charge_entry_id", type: "number", min: "1", required: true, testid: "refund-entry" })),
    h("label", { class: "field" }, t("finance.amount"), h("input", { name: "amount", type: "number", min: "1", required: true, testid: "refund-amount" })),
    h("label", { class: "field" }, t("finance.reason"), h("input", { name: "reason", required: true, testid: "refund-reason" })),
    h("button", { type: "submit", testid: "refund-submit" }, t("finance.refund")));

  async function loadLedger() {
    if (!account) return;
    try {
      const page = await api("GET", "/credits/ledger", { params: { account_id: account, limit: 50 } });
      mount(ledger, table([
        [t("ledger.entry"), (e) => String(e.entry_id), "num"],
        [t("ledger.when"), (e) => when(e.created_at)],
        [t("ledger.kind"), (e) => e.kind],
        [t("ledger.amount"), (e) => String(e.amount), "num"],
        [t("ledger.balance_after"), (e) => String(e.balance_after), "num"],
        [t("ledger.reason"), (e) => e.reason ?? e.reference ?? ""],
        ["", (e) => (e.kind === "charge" || e.kind === "capture")
          ? h("button", { type: "button", class: "secondary", testid: "refund-pick", onclick: () => {
            refundForm.elements.charge_entry_id.value = e.entry_id;
            refundForm.elements.amount.value = Math.abs(e.amount);
            refundForm.elements.reason.focus();
          } }, t("finance.refund"))
          : ""],
      ], page.items, (e) => ({ testid: "finance-ledger-row", "data-entry-id": e.entry_id, "data-kind": e.kind })));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function refund(event) {
    event.preventDefault();
    ctx.clearError();
    const data = fields(event.currentTarget);
    try {
      const answer = await api("POST", "/credits/refund", {
        body: { charge_entry_id: Number(data.charge_entry_id), amount: Number(data.amount), reason: data.reason },
      });
      const entry = answer.entry ?? answer;
      refundResult.textContent = t("finance.refunded", { entry: entry.entry_id ?? "", amount: data.amount });
      await loadLedger();
    } catch (error) {
      refundResult.textContent = "";
      ctx.showError(error);
    }
  }

  async function adjust(event) {
    event.preventDefault();
    ctx.clearError();
    const data = fields(event.currentTarget);
    try {
      const answer = await api("POST", "/credits/adjust", {
        body: { account_id: data.account_id, amount: Number(data.amount), reason: data.reason },
      });
      const entry = answer.entry ?? answer;
      adjustResult.textContent = t("finance.adjusted", { entry: entry.entry_id ?? "", amount: data.amount, account: data.account_id });
      if (data.account_id === account) await loadLedger();
    } catch (error) {
      adjustResult.textContent = "";
      ctx.showError(error);
    }
  }

  async function loadRuns() {
    if (!ctx.can("reconciliations:read")) return;
    try {
      const answer = await api("GET", "/payments/reconciliations");
      const items = answer.items ?? answer;
      mount(runs, items.length === 0 ? h("p", { class: "muted" }, t("finance.no_runs")) : items.map((run) =>
        h("div", { class: "card", testid: "reconciliation-run", "data-date": run.date },
          h("h3", {}, `${run.date} · ${run.status}`),
          h("p", { class: "muted" }, t("finance.counts", run.counts)),
          run.items.length ? table([
            [t("finance.class"), (i) => i.class],
            [t("orders.no"), (i) => i.out_trade_no],
            [t("finance.local"), (i) => String(i.local_amount_fen ?? ""), "num"],
            [t("finance.bill"), (i) => String(i.bill_amount_fen ?? ""), "num"],
            [t("finance.action"), (i) => i.action],
          ], run.items, () => ({ testid: "reconciliation-item" })) : null)));
    } catch (error) {
      ctx.showError(error);
    }
  }

  mount(root,
    h("section", { class: "card" }, h("h2", {}, t("finance.orders")),
      h("form", { class: "inline", onsubmit: (event) => { event.preventDefault(); loadOrders(fields(event.currentTarget).status); } },
        h("label", { class: "field" }, t("orders.status"),
          h("select", { name: "status" }, ["", "pending", "paid", "closed", "failed", "refunded"].map((s) => h("option", { value: s }, s || t("common.any"))))),
        h("button", { type: "submit" }, t("common.show"))),
      orders),
    h("section", { class: "card" }, h("h2", {}, t("finance.account")),
      h("form", { class: "inline", onsubmit: (event) => { event.preventDefault(); account = fields(event.currentTarget).account_id; loadLedger(); } },
        h("label", { class: "field" }, t("finance.account_id"), h("input", { name: "account_id", required: true, testid: "finance-account" })),
        h("button", { type: "submit", testid: "finance-account-show" }, t("common.show"))),
      ledger),
    ctx.can("credits:refund") ? h("section", { class: "card" }, h("h2", {}, t("finance.refunds")), refundForm, refundResult) : null,
    ctx.can("credits:adjust") ? h("section", { class: "card" }, h("h2", {}, t("finance.adjustments")),
      h("form", { class: "inline", onsubmit: adjust },
        h("label", { class: "field" }, t("finance.account_id"), h("input", { name: "account_id", required: true, testid: "adjust-account" })),
        h("label", { class: "field" }, t("finance.amount_signed"), h("input", { name: "amount", type: "number", required: true, testid: "adjust-amount" })),
        h("label", { class: "field" }, t("finance.reason"), h("input", { name: "reason", required: true, testid: "adjust-reason" })),
        h("button", { type: "submit", testid: "adjust-submit" }, t("finance.adjust"))),
      adjustResult) : null,
    ctx.can("reconciliations:read") ? h("section", { class: "card" }, h("h2", {}, t("finance.reconciliations")), runs) : null);
  await Promise.all([loadOrders(), loadRuns()]);
  return null;
}
