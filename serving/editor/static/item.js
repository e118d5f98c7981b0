// The open item: setting the editor up for one (from the queue or the expert's own image), closing it, and
// leaving it: painting not yet sent asks first, and a claim left without a correction is given back.
import { isLeaving, releaseItem } from "./api.js";
import { classesFor, fillClasses, updateLabelNote } from "./classes.js";
import { setBase } from "./contrast.js";
import { updateControls } from "./controls.js";
import { el } from "./elements.js";
import { updateLease } from "./lease.js";
import { bilinear, modelAttention, workingSize } from "./maps.js";
import { ask, showError } from "./messages.js";
import { markOpenInQueue } from "./queue.js";
import { requestRender } from "./render.js";
import { renderScores } from "./scores.js";
import { S } from "./state.js";
import { defaultSize, setSizeIndex } from "./tools.js";
import { fitPicture } from "./zoom.js";

const UNDO_BYTES = 64e6; // memory for undo snapshots (map and mask)

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.decoding = "async";
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("image"));
    img.src = src;
  });
}

// The correction's idempotency key: a retried submission is stored once.
function newKey() {
  if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Sets up the editor for an item: source ("queue" | "upload"), reviewId, imageB64, model_name, model_version,
// prediction_id, predicted_label, scores, attention, lease_expires, confidence, priority, reason.
export function openItem(item, img, iw, ih) {
  let att = modelAttention(item.attention);
  if (!att) {
    showError("The model’s attention map for this item is missing or malformed; starting from an empty map.");
    att = { h: 8, w: 8, values: new Float32Array(64) };
  }
  S.iw = iw || img.naturalWidth; S.ih = ih || img.naturalHeight;
  const [W, H] = workingSize(S.iw, S.ih);
  S.item = item;
  S.W = W; S.H = H;
  S.mh = att.h; S.mw = att.w;
  S.modelUp = bilinear(att.values, att.w, att.h, W, H);
  S.map = S.modelUp.slice();
  S.decided = new Uint8Array(W * H);
  S.decidedAny = false;
  S.confirmed = false;
  S.label = null;
  S.undo = []; S.redo = [];
  S.maxUndo = Math.max(5, Math.min(50, Math.floor(UNDO_BYTES / (5 * W * H))));
  S.stroke = null; S.box = null;
  item.idempotencyKey = newKey();

  el.canvas.width = W; el.canvas.height = H;
  S.base.width = W; S.base.height = H;
  S.overlay.width = W; S.overlay.height = H;
  S.overlayData = new ImageData(W, H);
  setBase(img);

  el.empty.hidden = true;
  el.viewport.hidden = false;
  if (window.scrollY > 0) window.scrollTo(0, 0); // a narrow window stacks the lists below: back to the picture
  el.viewport.scrollLeft = 0; el.viewport.scrollTop = 0;
  fitPicture();
  setSizeIndex(defaultSize(), false);

  fillClasses(classesFor(item.model_name, item.scores, item.predicted_label));
  updateLabelNote();
  renderScores(el.scoresOld, item.scores);
  renderScores(el.scoresNew, [], "Paint, then press Try it to see the scores with your map.");

  const parts = [item.source === "upload" ? "Your image" : "Queue item", "predicted " + item.predicted_label];
  if (item.reason) parts.push(item.reason); // the priority's words, with the figures
  else if (typeof item.confidence === "number") parts.push((item.confidence * 100).toFixed(0) + "% sure");
  parts.push(S.iw + "×" + S.ih + " px");
  el.itemInfo.textContent = parts.join(" · ");
  el.itemInfo.classList.remove("muted");
  el.itemInfo.title = el.itemInfo.textContent + " · " + item.model_name + (item.model_version ? " version " + item.model_version : "");

  updateLease();
  markOpenInQueue();
  updateControls();
  requestRender();
}

export function closeItem() {
  S.openSeq++;
  S.item = null;
  S.map = null; S.modelUp = null; S.decided = null; S.grey = null;
  S.decidedAny = false; S.confirmed = false; S.label = null;
  S.undo = []; S.redo = []; S.stroke = null; S.box = null;
  S.W = 0; S.H = 0; S.mh = 0; S.mw = 0; S.iw = 0; S.ih = 0;
  el.viewport.hidden = true;
  el.brushCursor.hidden = true;
  el.boxPreview.hidden = true;
  el.contrastPanel.hidden = true;
  el.empty.hidden = false;
  el.itemInfo.textContent = "No item open";
  el.itemInfo.title = "";
  el.itemInfo.classList.add("muted");
  el.classList.textContent = "";
  el.usePredicted.textContent = "Use predicted";
  updateLabelNote();
  el.scoresOld.textContent = "";
  el.scoresNew.textContent = "";
  el.scoresNewNote.textContent = "";
  el.zoomValue.textContent = "";
  el.zoomHint.hidden = true;
  updateLease();
  markOpenInQueue();
  updateControls();
}

// Painting not yet sent: leaving it (another item, a reload, signing out) asks first.
export const unsaved = () => !!S.item && (S.decidedAny || S.confirmed);
export function mayLeave(action) {
  if (!unsaved()) return Promise.resolve(true);
  return ask("You have painted on this item and not submitted it. " + action + " and lose your painting?", action, "Keep painting");
}

// Give back a claim we leave without a correction: not a skip, so Open next may offer it again.
export function releaseQuietly(item, keepalive) {
  if (!item || item.source !== "queue" || !item.reviewId || item.released) return;
  item.released = true;
  releaseItem(item.reviewId, keepalive).catch(() => {});
}

export function wireItem() {
  window.addEventListener("beforeunload", (e) => {
    if (unsaved() && !isLeaving()) { e.preventDefault(); e.returnValue = ""; }
  });
  // A page that goes away gives its item back, without counting it as skipped.
  window.addEventListener("pagehide", () => { releaseQuietly(S.item, true); });
}
