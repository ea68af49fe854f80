// Tasks: create with a live estimate, the list, and a task's detail with a live progress bar and
// its event history; cancel. Live updates come from the personal channel (the caller's own tasks)
// or, for someone else's task opened by an operator, from a subscription to `task:{id}`.

import { api } from "./api.js";
import { h, mount, table, when } from "./dom.js";
import { t } from "./i18n.js";
import * as realtime from "./realtime.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

function progressBar(progress) {
  const fill = h("span");
  fill.style.width = `${progress}%`;
  return h("div", {
    class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": String(progress), testid: "task-progress",
  }, fill);
}

function setProgress(bar, progress) {
  bar.setAttribute("aria-valuenow", String(progress));
  bar.firstChild.style.width = `${progress}%`;
}

export async function render(root, ctx, [taskId]) {
  return taskId ? detail(root, ctx, taskId) : list(root, ctx);
}

async function list(root, ctx) {
  const estimate = h("strong", { testid: "task-estimate" }, "");
  const rows = h("div");
  const tasks = new Map();
  let timer = null;

  const form = h("form", { class: "inline", onsubmit: create, oninput: () => { clearTimeout(timer); timer = setTimeout(estimateNow, 250); } },
    h("label", { class: "field" }, t("tasks.type"), h("input", { name: "task_type", value: "render", required: true, testid: "task-type" })),
    h("label", { class: "field" }, t("tasks.units"), h("input", { name: "units", type: "number", min: "1", value: "10", required: true, testid: "task-units" })),
    h("span", {}, t("tasks.estimate"), " ", estimate),
    h("button", { type: "submit", testid: "task-create" }, t("tasks.create")));

  function body() {
    const data = new FormData(form);
    return { task_type: String(data.get("task_type")).trim(), units: Number(data.get("units")) };
  }

  // The estimate clears only an error it showed itself: a refused creation stays on screen when
  // a debounced estimate lands after it.
  let estimateError = null;
  async function estimateNow() {
    const request = body();
    if (!request.task_type || !Number.isSafeInteger(request.units) || request.units < 1) {
      estimate.textContent = "";
      return;
    }
    try {
      const answer = await api("POST", "/credits/estimate", { body: request });
      estimate.textContent = String(answer.estimated_credits);
      if (estimateError) ctx.clearError(estimateError);
      estimateError = null;
    } catch (error) {
      estimate.textContent = "";
      estimateError = error;
      ctx.showError(error);
    }
  }

  async function create(event) {
    event.preventDefault();
    ctx.clearError();
    try {
      const task = await api("POST", "/tasks", { body: body() });
      tasks.set(task.id, task);
      draw();
    } catch (error) {
      ctx.showError(error);
    }
  }

  function draw() {
    const sorted = [...tasks.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    mount(rows, table([
      [t("tasks.id"), (task) => h("a", { href: `#/tasks/${task.id}` }, task.id.slice(0, 8))],
      [t("tasks.type"), (task) => task.task_type],
      [t("tasks.units"), (task) => String(task.units), "num"],
      [t("tasks.status"), (task) => h("span", { class: `status-${task.status}`, testid: "task-status" }, task.status)],
      [t("tasks.progress"), (task) => progressBar(task.progress)],
      [t("tasks.cost"), (task) => String(task.actual_cost ?? task.estimated_credits), "num"],
      [t("tasks.created"), (task) => when(task.created_at)],
    ], sorted, (task) => ({ testid: "task-row", "data-task-id": task.id, "data-status": task.status })));
  }

  async function load() {
    try {
      const page = await api("GET", "/tasks", { params: { limit: 50 } });
      for (const task of page.items) tasks.set(task.id, task);
      draw();
    } catch (error) {
      ctx.showError(error);
    }
  }

  mount(root,
    h("section", { class: "card" }, h("h2", {}, t("tasks.new")), form),
    h("section", { class: "card" }, h("h2", {}, t("tasks.title")), rows));
  await Promise.all([load(), estimateNow()]);

  const offPublication = realtime.onPublication((data) => {
    if (!data?.type?.startsWith("task.")) return;
    const task = tasks.get(data.task_id);
    if (!task) {
      load();
      return;
    }
    if (data.seq <= (task.seq ?? 0)) return;
    Object.assign(task, { seq: data.seq, status: data.state, progress: data.progress });
    if (data.actual_cost !== undefined) task.actual_cost = data.actual_cost;
    draw();
  });
  const offUnrecovered = realtime.onUnrecovered(load);
  return () => { offPublication(); offUnrecovered(); clearTimeout(timer); };
}

async function detail(root, ctx, taskId) {
  let task;
  try {
    task = await api("GET", `/tasks/${encodeURIComponent(taskId)}`);
  } catch (error) {
    ctx.showError(error);
    mount(root, h("p", {}, h("a", { href: "#/tasks" }, t("tasks.back"))));
    return null;
  }
  const status = h("strong", { testid: "task-status" });
  const bar = progressBar(task.progress);
  const cost = h("span");
  const history = h("div", { class: "events", testid: "task-events" });
  const cancel = h("button", { type: "button", testid: "task-cancel", onclick: cancelTask }, t("tasks.cancel"));
  let lastSeq = 0;

  function showTask() {
    status.textContent = task.status;
    status.className = `status-${task.status}`;
    setProgress(bar, task.progress);
    cost.textContent = task.actual_cost !== null && task.actual_cost !== undefined
      ? t("tasks.cost_actual", { cost: task.actual_cost, held: task.estimated_credits })
      : t("tasks.cost_held", { held: task.estimated_credits });
    cancel.disabled = TERMINAL.has(task.status);
  }

  function addEvent(seq, kind, state, progress, message, at) {
    if (seq <= lastSeq) return;
    lastSeq = seq;
    history.append(h("div", { testid: "task-event", "data-seq": seq },
      `#${seq} ${when(at)} ${kind} ${state ?? ""} ${progress ?? ""}${progress === undefined || progress === null ? "" : "%"} ${message ?? ""}`));
  }

  async function loadEvents() {
    try {
      const events = await api("GET", `/tasks/${encodeURIComponent(taskId)}/events`, { params: { after_seq: lastSeq, limit: 500 } });
      for (const event of events.items) addEvent(event.seq, event.kind, event.status, event.progress, event.message, event.created_at);
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function reload() {
    try {
      task = await api("GET", `/tasks/${encodeURIComponent(taskId)}`);
      showTask();
      await loadEvents();
    } catch (error) {
      ctx.showError(error);
    }
  }

  async function cancelTask() {
    ctx.clearError();
    try {
      const answer = await api("POST", `/tasks/${encodeURIComponent(taskId)}/cancel`, { body: {} });
      task = answer.task ?? answer;
      showTask();
      await loadEvents();
    } catch (error) {
      ctx.showError(error);
    }
  }

  function apply(data) {
    if (data?.task_id !== taskId || data.seq <= (task.seq ?? 0)) return;
    task = { ...task, seq: data.seq, status: data.state, progress: data.progress,
      actual_cost: data.actual_cost ?? task.actual_cost };
    showTask();
    if (data.seq === lastSeq + 1) addEvent(data.seq, data.type.replace("task.", ""), data.state, data.progress, data.message, data.ts);
    else loadEvents();
  }

  mount(root,
    h("p", {}, h("a", { href: "#/tasks" }, t("tasks.back"))),
    h("section", { class: "card", testid: "task-detail", "data-task-id": taskId },
      h("h2", {}, `${task.task_type} × ${task.units}`),
      h("p", { class: "muted" }, task.id),
      h("p", {}, t("tasks.status"), " ", status, " · ", cost),
      bar,
      h("p", {}, cancel)),
    h("section", { class: "card" }, h("h3", {}, t("tasks.history")), history));
  showTask();
  await loadEvents();

  const offPublication = realtime.onPublication((data) => {
    if (data?.type?.startsWith("task.")) apply(data);
  });
  const offUnrecovered = realtime.onUnrecovered(reload);
  // Someone else's task (an operator looking): its own channel.
  let subscription = null;
  if (task.owner_id !== ctx.me.user_id && realtime.sdk()) {
    subscription = realtime.sdk().newSubscription(`task:${taskId}`);
    subscription.on("publication", (event) => apply(event.data));
    subscription.subscribe();
  }
  return () => {
    offPublication();
    offUnrecovered();
    if (subscription) {
      subscription.unsubscribe();
      realtime.sdk()?.removeSubscription(subscription);
    }
  };
}
