// Strings in English and Chinese (messages.json). A failure is shown by its problem `code`, which
// is the translation key (`error.<code>`); an unknown code falls back to the problem's own title.

let messages = { en: {}, zh: {} };
let lang = "en";

export async function loadMessages(url) {
  const response = await fetch(url);
  messages = await response.json();
  const saved = localStorage.getItem("console.lang");
  lang = saved in messages ? saved : (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  return lang;
}

export function currentLang() {
  return lang;
}

export function setLang(next) {
  if (!(next in messages)) return;
  lang = next;
  localStorage.setItem("console.lang", next);
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
  translateStatic();
}

/** The string `key` with `{name}` placeholders filled from `vars`. */
export function t(key, vars = {}) {
  const text = messages[lang]?.[key] ?? messages.en?.[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

/** Whether `key` has a string. */
export function has(key) {
  return key in (messages[lang] ?? {}) || key in (messages.en ?? {});
}

/** The sentence for a problem code (`fallback`: the problem's title, for codes not listed). */
export function errorText(code, fallback) {
  return has(`error.${code}`) ? t(`error.${code}`) : fallback || t("error.unknown");
}

/** Translates the static page's `data-i18n` elements. */
export function translateStatic(root = document) {
  for (const element of root.querySelectorAll("[data-i18n]")) element.textContent = t(element.dataset.i18n);
}
