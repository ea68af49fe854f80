// Wallet: the ledger with paging and a recharge through WeChat Pay Native (the QR code of the
// order's `code_url`; the page turns to "paid" when `payment.succeeded` arrives on the personal
// channel, or when the order reads paid after a realtime drop that could not be recovered).

import { api } from "./api.js";
import { h, mount, table, when } from "./dom.js";
import { t } from "./i18n.js";
import * as realtime from "./realtime.js";
import { renderSVG } from "./uqr.mjs";

export async function render(root, ctx) {
  const ledgerBox = h("div");
  const status = h("strong", { testid: "recharge-status", class: "" });
  const qr = h("div", { class: "qr", testid: "recharge-qr", hidden: true });
  const orderInfo = h("p", { class: "muted" });
  let order = null;

  function showOrder(next) {
    order = next;
    status.textContent = order.status;
    status.className = `status-${order.status}`;
    orderInfo.textContent = t("recharge.order", {
      no: order.out_trade_no, yuan: (order.amount_fen / 100).toFixed(2), credits: order.credits,
    });
    if (order.status === "pending" && order.code_url) {
      const svg = renderSVG(order.code_url, { border: 2 });
      mount(qr, h("img", { src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`, alt: t("recharge.qr_alt") }),
        h("div", { class: "muted", testid: "recharge-code-url" }, order.code_url));
      qr.hidden = false;
    } else {
      qr.hidden = true;
    }
  }

  async function recharge(event) {
    event.preventDefault();
    ctx.clearError();
    const yuan = Number(new FormData(event.currentTarget).get("yuan"));
    const amount_fen = Math.round(yuan * 100);
    try {
      showOrder(await api("POST", "/payments/recharge", { body: { amount_fen } }));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function closeOrder() {
    if (!order) return;
    try {
      showOrder(await api("POST", `/payments/orders/${encodeURIComponent(order.order_id)}/close`, { body: {} }));
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function reloadOrder() {
    if (!order) return;
    try {
      showOrder(await api("GET", `/payments/orders/${encodeURIComponent(order.order_id)}`));
    } catch (error) {
      ctx.showError(error);
    }
  }

  const chargeResult = h("p", { class: "muted", testid: "charge-result" });
  async function charge(event) {
    event.preventDefault();
    ctx.clearError();
    const data = new FormData(event.currentTarget);
    try {
      const entry = await api("POST", "/credits/charge", {
        body: { amount: Number(data.get("amount")), reason: String(data.get("reason")).trim() },
      });
      chargeResult.textContent = t("charge.done", { amount: -entry.amount, entry: entry.entry_id, balance: entry.balance_after });
      await loadLedger();
    } catch (error) {
      chargeResult.textContent = "";
      ctx.showError(error);
    }
  }

  let cursors = [];
  async function loadLedger(cursor) {
    try {
      const page = await api("GET", "/credits/ledger", { params: { limit: 20, cursor } });
      mount(ledgerBox,
        table([
          [t("ledger.when"), (e) => when(e.created_at)],
          [t("ledger.kind"), (e) => e.kind],
          [t("ledger.amount"), (e) => String(e.amount), "num"],
          [t("ledger.balance_after"), (e) => String(e.balance_after), "num"],
          [t("ledger.held_after"), (e) => String(e.held_after), "num"],
          [t("ledger.reason"), (e) => e.reason ?? e.reference ?? ""],
        ], page.items, (e) => ({ testid: "ledger-row", "data-entry-id": e.entry_id })),
        h("div", { class: "row pager" },
          h("button", { class: "secondary", disabled: cursors.length === 0, onclick: () => { cursors = []; loadLedger(); } }, t("page.first")),
          h("button", { class: "secondary", disabled: !page.next_cursor, testid: "ledger-next",
            onclick: () => { cursors.push(cursor); loadLedger(page.next_cursor); } }, t("page.next"))));
    } catch (error) {
      ctx.showError(error);
    }
  }

  mount(root,
    h("div", { class: "grid" },
      h("section", { class: "card" },
        h("h2", {}, t("recharge.title")),
        h("form", { class: "inline", onsubmit: recharge },
          h("label", { class: "field" }, t("recharge.amount"),
            h("input", { name: "yuan", type: "number", min: "0.01", step: "0.01", value: "9.90", required: true, testid: "recharge-amount" })),
          h("button", { type: "submit", testid: "recharge-submit" }, t("recharge.submit"))),
        h("p", {}, t("recharge.status"), " ", status),
        orderInfo, qr,
        h("div", { class: "row" },
          h("button", { type: "button", class: "secondary", onclick: reloadOrder }, t("recharge.refresh")),
          h("button", { type: "button", class: "secondary", testid: "recharge-close", onclick: closeOrder }, t("recharge.close")))),
      ctx.can("credits:charge") ? h("section", { class: "card" },
        h("h2", {}, t("charge.title")),
        h("form", { class: "inline", onsubmit: charge },
          h("label", { class: "field" }, t("charge.amount"),
            h("input", { name: "amount", type: "number", min: "1", step: "1", value: "25", required: true, testid: "charge-amount" })),
          h("label", { class: "field" }, t("charge.reason"),
            h("input", { name: "reason", value: "console purchase", required: true, testid: "charge-reason" })),
          h("button", { type: "submit", testid: "charge-submit" }, t("charge.submit"))),
        chargeResult) : null,
      h("section", { class: "card" },
        h("h2", {}, t("wallet.how_title")),
        h("p", { class: "muted" }, t("wallet.how")))),
    h("section", { class: "card" }, h("h2", {}, t("ledger.title")), ledgerBox));

  await loadLedger();
  const offPublication = realtime.onPublication((data) => {
    if (data?.type === "payment.succeeded" && order && data.order_id === order.order_id) {
      showOrder({ ...order, status: "paid" });
      loadLedger();
    } else if (data?.type === "balance.changed") {
      loadLedger();
    }
  });
  const offUnrecovered = realtime.onUnrecovered(() => { reloadOrder(); loadLedger(); });
  return () => { offPublication(); offUnrecovered(); };
}
