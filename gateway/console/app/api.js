// The public API (`/api/v1`), with the signed-in user's bearer token. Failures become `ApiProblem`s
// carrying the problem's `code`; nothing else about the server is assumed.

const TOKEN_KEY = "console.token";

export class ApiProblem extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code || (status === 0 ? "network_error" : "http_error");
    this.title = problem?.title;
    this.problem = problem;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params ?? {})) {
    if (value === undefined || value === null || value === "") continue;
    search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * `api("POST", "/credits/charge", {body, idempotencyKey})`: the JSON answer, or throws an
 * ApiProblem. Writes carry an `Idempotency-Key` (one per user action: pass it to retry safely).
 */
export async function api(method, path, { body, params, idempotencyKey, raw } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "DELETE") headers["Idempotency-Key"] = idempotencyKey || crypto.randomUUID();
  let response;
  try {
    response = await fetch(`/api/v1${path}${query(params)}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiProblem(0, null);
  }
  if (raw && response.ok) return response;
  const text = await response.text();
  let value = null;
  try {
    value = text ? JSON.parse(text) : null;
  } catch {
    value = null;
  }
  if (!response.ok) throw new ApiProblem(response.status, value);
  return value;
}
