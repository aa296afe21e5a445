// The JSON API client of the dashboard: the same endpoints the Go and
// Python clients use, with the operator's key in X-API-Key.

const KEY_STORAGE = "pharox.apiKey";

// ApiError is an answer other than 2xx, with the API's detail.
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || "HTTP " + status);
    this.status = status;
    this.detail = detail || "";
  }
}

// getKey returns the key kept for this tab, or "".
export function getKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

// request calls the API and returns the decoded JSON body (null when
// there is none). It throws ApiError on an error answer.
export async function request(method, path, body, key = getKey()) {
  const headers = { "X-API-Key": key, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const raw = await res.text();
  let data = null;
  if (raw) {
    try {
      data = JSON.parse(raw);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : res.statusText;
    throw new ApiError(res.status, detail);
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  dashboard: (key) => request("GET", "/v1/admin/dashboard", undefined, key),
  proxies: (poolId) => request("GET", `/v1/pools/${enc(poolId)}/proxies/`),
  targets: (poolId) => request("GET", `/v1/pools/${enc(poolId)}/targets`),
  activeLeases: (limit) => request("GET", `/v1/leases/?status=active&limit=${limit}`),
  setStatus: (poolId, proxyId, status) =>
    request("PATCH", `/v1/pools/${enc(poolId)}/proxies/${enc(proxyId)}`, { status }),
  sweep: (poolId, target) =>
    request("POST", `/v1/pools/${enc(poolId)}/health-check`, target ? { target_url: target } : {}),
  release: (leaseId) => request("POST", `/v1/leases/${enc(leaseId)}/release`, {}),
  self: (key) => request("GET", "/v1/keys/self", undefined, key),
  keys: () => request("GET", "/v1/keys/"),
  createKey: (body) => request("POST", "/v1/keys/", body),
  rotateKey: (id) => request("POST", `/v1/keys/${enc(id)}/rotate`, {}),
  revokeKey: (id) => request("DELETE", `/v1/keys/${enc(id)}`),
  audit: (limit) => request("GET", `/v1/audit/?limit=${limit}`),
  usage: (groupBy, since) => request("GET", `/v1/usage?group_by=${enc(groupBy)}&since=${enc(since)}`),
  quotas: () => request("GET", "/v1/quotas/"),
};
