// The creator dashboard: tasks by state, success rate, durations, credits spent and recharged per
// Beijing day (an SVG chart built with DOM calls), top task types.

import { api } from "./api.js";
import { h, mount, table } from "./dom.js";
import { t } from "./i18n.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  for (const child of children) element.append(child);
  return element;
}

/** Bars of spent and recharged credits per day. */
function chart(daily) {
  const width = 720;
  const height = 220;
  const bottom = 24;
  const max = Math.max(1, ...daily.flatMap((d) => [d.spent, d.recharged]));
  const slot = width / Math.max(1, daily.length);
  const bar = Math.max(1, slot / 2 - 1);
  const scale = (value) => ((height - bottom - 6) * value) / max;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": t("dashboard.chart") });
  daily.forEach((day, index) => {
    const x = index * slot;
    const spent = scale(day.spent);
    const recharged = scale(day.recharged);
    root.append(svg("rect", { class: "spent", x, y: height - bottom - spent, width: bar, height: spent, "data-day": day.day, "data-spent": day.spent },
      svg("title", {}, `${day.day}: ${t("dashboard.spent")} ${day.spent}`)));
    root.append(svg("rect", { class: "recharged", x: x + bar + 1, y: height - bottom - recharged, width: bar, height: recharged, "data-day": day.day, "data-recharged": day.recharged },
      svg("title", {}, `${day.day}: ${t("dashboard.recharged")} ${day.recharged}`)));
    if (daily.length <= 14 || index % Math.ceil(daily.length / 10) === 0) {
      const label = svg("text", { x, y: height - 6 });
      label.textContent = String(day.day).slice(5);
      root.append(label);
    }
  });
  const top = svg("text", { x: 2, y: 12 });
  top.textContent = String(max);
  root.append(top);
  return root;
}

export async function render(root, ctx) {
  const body = h("div");
  let creator = ctx.me.user_id;
  let days = 30;

  async function load() {
    const to = new Date();
    const from = new Date(to.getTime() - days * 86400000);
    try {
      const data = await api("GET", `/creators/${encodeURIComponent(creator)}/dashboard`, {
        params: { from: from.toISOString(), to: to.toISOString() },
      });
      const figure = (label, value, testid) => h("div", { class: "card" },
        h("div", { class: "muted" }, label), h("div", { class: "figure", testid }, String(value)));
      mount(body,
        h("div", { class: "grid" },
          ["queued", "running", "succeeded", "failed", "canceled", "total"].map((state) =>
            figure(t(`dashboard.tasks_${state}`), data.tasks[state], `dashboard-tasks-${state}`)),
          figure(t("dashboard.success_rate"), data.success_rate === null ? "—" : `${(data.success_rate * 100).toFixed(1)}%`, "dashboard-success-rate"),
          figure(t("dashboard.duration"), `${data.duration_seconds.p50 ?? "—"} / ${data.duration_seconds.p95 ?? "—"} s`, "dashboard-duration"),
          figure(t("dashboard.spent"), data.credits.spent, "dashboard-spent"),
          figure(t("dashboard.recharged"), data.credits.recharged, "dashboard-recharged")),
        h("section", { class: "card chart", testid: "dashboard-chart" },
          h("h3", {}, t("dashboard.per_day")),
          h("p", { class: "legend" }, h("span", { class: "spent" }, t("dashboard.spent")), " ", h("span", { class: "recharged" }, t("dashboard.recharged"))),
          chart(data.daily)),
        h("section", { class: "card" }, h("h3", {}, t("dashboard.top_types")),
          table([
            [t("tasks.type"), (row) => row.task_type],
            [t("dashboard.tasks_total"), (row) => String(row.tasks), "num"],
            [t("dashboard.tasks_succeeded"), (row) => String(row.succeeded), "num"],
          ], data.top_task_types, () => ({ testid: "dashboard-top-type" }))));
    } catch (error) {
      ctx.showError(error);
    }
  }

  const controls = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.currentTarget);
    days = Number(data.get("days"));
    creator = String(data.get("creator") || ctx.me.user_id).trim();
    load();
  } },
    h("label", { class: "field" }, t("dashboard.range"),
      h("select", { name: "days", testid: "dashboard-days" }, [7, 30, 90, 365].map((n) => h("option", { value: n, selected: n === 30 }, t("dashboard.days", { n }))))),
    ctx.can("dashboard:read:any") ? h("label", { class: "field" }, t("dashboard.creator"), h("input", { name: "creator", value: creator })) : null,
    h("button", { type: "submit" }, t("common.show")));
  mount(root, h("section", { class: "card" }, h("h2", {}, t("dashboard.title")), controls), body);
  await load();
  return null;
}
