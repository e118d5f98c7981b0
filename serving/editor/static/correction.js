// The actions on the open item: Try it (predict with the expert's map), Submit (store the correction) and
// Skip. A correction sends the map at the working size with the pixels the expert decided, or the model's
// map confirmed as right.
import { ApiError, predict, serverNow, skipItem, storeCorrection } from "./api.js";
import { openNext } from "./claims.js";
import { missing, updateControls } from "./controls.js";
import { el } from "./elements.js";
import { closeItem, mayLeave } from "./item.js";
import { updateLease } from "./lease.js";
import { areaDown, mapJson, maskBase64 } from "./maps.js";
import { clearError, setStatus, showError } from "./messages.js";
import { refreshDone } from "./progress.js";
import { refreshQueue } from "./queue.js";
import { renderScores } from "./scores.js";
import { S } from "./state.js";

const AUTO_NEXT = "abn-editor-auto-next"; // localStorage: "0" when the expert turned "Then open the next item" off

export async function tryIt() {
  const item = S.item;
  if (!item || S.busy.tryIt || S.stroke) return;
  S.busy.tryIt = true;
  updateControls();
  const body = item.source === "queue" ? { review_id: item.reviewId } : { image: item.imageB64 };
  body.attention = mapJson(S.mh, S.mw, areaDown(S.map, S.W, S.H, S.mw, S.mh)); // at the model's resolution
  try {
    const r = await predict(body);
    if (S.item !== item) return;
    const note = r && r.attention_supplied === false
      ? "This model did not use the supplied map; these are its own scores."
      : "The same model with your map in place of its own (nothing is stored).";
    renderScores(el.scoresNew, (r && r.scores) || [], note);
    const top = r && r.scores && r.scores[0];
    setStatus(top ? "With your map the model says " + top.label + " (" + (top.probability * 100).toFixed(1) + "%)." : "Prediction done.");
  } catch (err) {
    showError(err);
  } finally {
    S.busy.tryIt = false;
    updateControls();
  }
}

export async function submit() {
  const item = S.item;
  if (!item || S.busy.submit || S.stroke) return;
  const need = missing();
  if (need.length) {
    showError("Nothing was stored. To submit, " + need.join(" and ") + ".", "info");
    return;
  }
  S.busy.submit = true;
  updateControls();
  const body = {
    label: S.label,
    predicted_label: item.predicted_label,
    prediction_id: item.prediction_id,
    model_name: item.model_name,
    model_version: item.model_version,
    idempotency_key: item.idempotencyKey,
  };
  if (item.source === "queue") body.review_id = item.reviewId;
  else body.image = item.imageB64;
  if (S.confirmed) {
    body.attention = mapJson(S.H, S.W, S.modelUp);
    body.confirmed = true;
  } else {
    body.attention = mapJson(S.H, S.W, S.map);
    body.decided = maskBase64(S.decided);
  }
  let stored = false;
  try {
    await storeCorrection(body);
    stored = true;
    if (S.item === item) closeItem();
    clearError();
    setStatus("Correction stored" + (body.confirmed ? " (the model’s map, confirmed). " : ". "));
    refreshDone();
  } catch (err) {
    showError(err);
    if (err instanceof ApiError && err.status === 409 && item.source === "queue" && S.item === item) {
      // The claim is gone: say so, and offer to claim the item again without losing the painting.
      item.lease_expires = Math.min(Number(item.lease_expires) || 0, serverNow() / 1000 - 1);
      updateLease();
    }
  } finally {
    S.busy.submit = false;
    updateControls();
  }
  if (stored && el.autoNext.checked && item.source === "queue") await openNext(el.status.textContent);
  else if (stored) refreshQueue(true);
}

export async function skip() {
  const item = S.item;
  if (!item || S.busy.skip || S.busy.submit) return;
  if (!(await mayLeave("Skip it"))) return;
  if (item.source === "upload") {
    closeItem();
    setStatus("Closed your image without storing a correction.");
    return;
  }
  S.busy.skip = true;
  updateControls();
  try {
    await skipItem(item.reviewId);
    if (S.item === item) closeItem();
    clearError();
    setStatus("Item skipped: it goes to the other experts.");
  } catch (err) {
    showError(err);
    // A claim that is already gone cannot be given back: close the item anyway.
    if (err instanceof ApiError && (err.status === 404 || err.status === 409) && S.item === item) closeItem();
  } finally {
    S.busy.skip = false;
    updateControls();
    refreshQueue(true);
  }
}

export function wireCorrection() {
  el.try.addEventListener("click", tryIt);
  el.submit.addEventListener("click", submit);
  el.skip.addEventListener("click", skip);
  el.autoNext.checked = localStorage.getItem(AUTO_NEXT) !== "0";
  el.autoNext.addEventListener("change", () => localStorage.setItem(AUTO_NEXT, el.autoNext.checked ? "1" : "0"));
}
