// The claim on the open queue item: how long it is the expert's, and claiming it again once it expired
// (the painting is kept).
import { claimItem, serverNow } from "./api.js";
import { el } from "./elements.js";
import { clearError, setStatus, showError } from "./messages.js";
import { S } from "./state.js";

export function updateLease() {
  const item = S.item;
  el.lease.classList.remove("warn", "expired");
  el.reclaim.hidden = true;
  if (!item) { el.lease.textContent = ""; return; }
  if (item.source === "upload") { el.lease.textContent = "Your own image"; return; }
  const expires = Number(item.lease_expires);
  if (!Number.isFinite(expires) || expires <= 0) { el.lease.textContent = ""; return; }
  const left = Math.floor(expires - serverNow() / 1000);
  if (left <= 0) {
    el.lease.textContent = "Claim expired: claim again before submitting";
    el.lease.classList.add("expired");
    el.reclaim.hidden = false;
    return;
  }
  const m = Math.floor(left / 60), s = left % 60;
  el.lease.textContent = "Yours for " + m + ":" + String(s).padStart(2, "0");
  if (left < 60) el.lease.classList.add("warn");
}

// Claim the open item again, keeping the painting.
async function reclaim() {
  const item = S.item;
  if (!item || item.source !== "queue" || S.busy.reclaim) return;
  S.busy.reclaim = true;
  el.reclaim.disabled = true;
  try {
    const c = await claimItem(item.reviewId);
    if (S.item === item) {
      item.lease_expires = c.lease_expires;
      if (c.prediction_id) item.prediction_id = c.prediction_id;
      clearError();
      setStatus("Claimed again. Your painting is kept.");
      updateLease();
    }
  } catch (err) {
    showError(err);
  } finally {
    S.busy.reclaim = false;
    el.reclaim.disabled = false;
  }
}

export function wireLease() {
  el.reclaim.addEventListener("click", reclaim);
  setInterval(updateLease, 1000);
}
