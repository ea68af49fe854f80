// Small DOM helpers: elements are built with `h`, never from HTML strings, so nothing a server or a
// user sent can become markup.

/** `h("div", {class: "x", dataset: {testid: "y"}, onclick}, child...)` */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "testid") element.dataset.testid = value;
    else if (name === "onsubmit") element.addEventListener("submit", once(element, value));
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/**
 * A form's submit handler that runs one at a time: while it works, the form's buttons are disabled
 * and another submit (a double click, Enter pressed twice) does nothing, so one action is sent once.
 */
function once(form, handler) {
  return async (event) => {
    if (form.dataset.busy) {
      event.preventDefault();
      return;
    }
    form.dataset.busy = "true";
    const buttons = [...form.querySelectorAll("button")];
    for (const button of buttons) button.disabled = true;
    try {
      await handler(event);
    } finally {
      delete form.dataset.busy;
      for (const button of buttons) button.disabled = false;
    }
  };
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `element`. */
export function mount(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A table: `columns` are `[header, (row) => cell, className?]`. */
export function table(columns, rows, rowAttrs = () => ({})) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([title, , cls]) => h("th", { class: cls }, title)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs(row),
      columns.map(([, cell, cls]) => h("td", { class: cls }, cell(row)))))));
}

/** A local date-time for people. */
export function when(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** A form's fields as an object of trimmed strings. */
export function fields(form) {
  const out = {};
  for (const [name, value] of new FormData(form).entries()) out[name] = String(value).trim();
  return out;
}
