// Claiming a queue item and opening it: Open next (the top of the filtered list), or an item of the list.
import { ApiError, claimItem, claimNext, imageUrl } from "./api.js";
import { updateControls } from "./controls.js";
import { el } from "./elements.js";
import { loadImage, mayLeave, openItem, releaseQuietly } from "./item.js";
import { updateLease } from "./lease.js";
import { clearError, setStatus, showError } from "./messages.js";
import { filters, refreshQueue } from "./queue.js";
import { S } from "./state.js";

// false if another open began meanwhile (seq is this open's S.openSeq)
async function openClaimed(claimed, seq) {
  let img;
  try {
    img = await loadImage(imageUrl(claimed));
  } catch (_) {
    throw new ApiError(0, "The image of this item could not be loaded. Try again, or skip the item.");
  }
  if (seq !== S.openSeq) return false;
  const previous = S.item;
  openItem({
    source: "queue",
    reviewId: claimed.id,
    imageB64: null,
    model_name: claimed.model_name,
    model_version: claimed.model_version,
    prediction_id: claimed.prediction_id,
    predicted_label: claimed.predicted_label,
    confidence: claimed.confidence,
    priority: claimed.priority,
    reason: claimed.reason,
    scores: claimed.scores,
    attention: claimed.attention,
    lease_expires: claimed.lease_expires,
  }, img, Number(claimed.image_width) || 0, Number(claimed.image_height) || 0);
  if (previous && previous.reviewId !== claimed.id) releaseQuietly(previous);
  return true;
}

// request: the claim call; confirmLeave: ask before leaving painting; said: a status to keep in front.
async function claimAndOpen(request, confirmLeave, said) {
  if (S.busy.open || S.busy.submit) return;
  if (confirmLeave && !(await mayLeave("Open another item"))) return;
  S.busy.open = true;
  updateControls();
  const seq = ++S.openSeq;
  try {
    const claimed = await request();
    if (seq !== S.openSeq) return;
    if (S.item && S.item.source === "queue" && S.item.reviewId === claimed.id) {
      S.item.lease_expires = claimed.lease_expires; // already open here: keep the painting, take the new lease
      updateLease();
      setStatus("This item is already open.");
      return;
    }
    clearError();
    if (await openClaimed(claimed, seq)) {
      setStatus((said || "") + "Opened an item predicted as " + claimed.predicted_label + ".");
      refreshQueue(true);
    }
  } catch (err) {
    showError(err, err instanceof ApiError && err.status === 404 ? "info" : undefined);
    if (err instanceof ApiError && (err.status === 404 || err.status === 409)) refreshQueue(true);
  } finally {
    S.busy.open = false;
    updateControls();
  }
}

// after: what the page said before (a stored correction), kept in front of its news.
export function openNext(after) {
  return claimAndOpen(() => claimNext(filters()), !after, after);
}

function claim(id) {
  if (S.item && S.item.source === "queue" && S.item.reviewId === id) return; // already open
  return claimAndOpen(() => claimItem(id), true);
}

export function wireClaims() {
  el.queue.addEventListener("click", (e) => {
    const li = e.target.closest("li.queue-item");
    if (li && el.queue.contains(li)) claim(li.dataset.id);
  });
  el.next.addEventListener("click", () => openNext(false));
}
