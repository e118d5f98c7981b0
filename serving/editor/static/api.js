// Every call to the gateway's JSON API. A refused call throws ApiError with words an expert can act on; an
// ended session (401) sends the page to sign in. The server's clock, from each answer's Date header, is what
// claims expire by.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
export class SignedOut extends Error {}

let clockSkewMs = 0; // server clock minus this clock
let leaving = false; // signing out or sent to sign in: no question on the way

export const serverNow = () => Date.now() + clockSkewMs; // milliseconds
export function leave() { leaving = true; }
export const isLeaving = () => leaving;

function statusWords(status) {
  if (status === 400) return "The service could not use this request.";
  if (status === 403) return "You are not allowed to do this.";
  if (status === 404) return "Not found. It may have been removed.";
  if (status === 409) return "Someone else has changed this item, or your claim on it has expired.";
  if (status === 413) return "The image is too large.";
  if (status === 429) return "Too many requests. Wait a moment and try again.";
  if (status === 502 || status === 503 || status === 504) return "The service is unavailable right now. Try again in a moment.";
  if (status >= 500) return "The service had an internal problem. Try again in a moment.";
  return "The request failed (HTTP " + status + ").";
}

function detailOf(data, status) {
  if (data && typeof data.detail === "string" && data.detail.trim()) return data.detail;
  return statusWords(status);
}

function noteServerClock(res) {
  const server = Date.parse(res.headers.get("Date") || "");
  if (Number.isNaN(server)) return;
  const skew = server - Date.now();
  // The header has one-second resolution: only correct a clock that is clearly off.
  clockSkewMs = Math.abs(skew) > 3000 ? skew : 0;
}

async function call(method, path, body, keepalive) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, keepalive: !!keepalive };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    if (body !== undefined) init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (_) {
    throw new ApiError(0, "Cannot reach the service. Check the network connection and try again.");
  }
  noteServerClock(res);
  if (res.status === 401) {
    leave();
    location.assign("/");
    throw new SignedOut("signed out");
  }
  let data = null;
  if (res.status !== 204) {
    const text = await res.text().catch(() => "");
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
  }
  if (!res.ok) throw new ApiError(res.status, detailOf(data, res.status));
  return data;
}

// ------------------------------------------------------------------ the calls
const queuePath = (id, what) => "/api/queue/" + encodeURIComponent(id) + "/" + what;

// A queue item's (or a claimed item's) picture.
export const imageUrl = (item) => item.image_url || queuePath(item.id, "image");

export function listQueue(filters, limit) {
  const params = new URLSearchParams(filters);
  params.set("limit", String(limit));
  return call("GET", "/api/queue?" + params.toString());
}
export const claimNext = (filters) => call("POST", "/api/queue/next", filters);
export const claimItem = (id) => call("POST", queuePath(id, "claim"), {});
export const skipItem = (id) => call("POST", queuePath(id, "skip"), {});
// keepalive: the request outlives a page that goes away
export const releaseItem = (id, keepalive) => call("POST", queuePath(id, "release"), {}, keepalive);

export const predict = (body) => call("POST", "/api/predict", body);
export const storeCorrection = (body) => call("POST", "/api/corrections", body);
// since: seconds since the epoch; all of them without it
export const myCorrections = (since) => call("GET", "/api/corrections/mine" + (since === undefined ? "" : "?since=" + since));
export const withdrawCorrection = (id) => call("POST", "/api/corrections/" + encodeURIComponent(id) + "/withdraw", {});

export const whoAmI = () => call("GET", "/api/me");
export const servedModels = () => call("GET", "/api/models");
export const endSession = () => call("DELETE", "/api/session");

// The Models page's (models.js): a model's history (the served one without a name), and an operator's changes.
export const modelHistory = (model) => call("GET", "/api/history" + (model ? "?model=" + encodeURIComponent(model) : ""));
export const rollBack = (model, servedVersion) =>
  call("POST", "/api/models/" + encodeURIComponent(model) + "/rollback", { served_version: servedVersion });
export const requeueRun = (run) => call("POST", "/api/runs/" + encodeURIComponent(run) + "/requeue", {});
export const rejectRun = (run) => call("POST", "/api/runs/" + encodeURIComponent(run) + "/reject", {});
