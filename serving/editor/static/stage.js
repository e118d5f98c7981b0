// The pointer on the stage (the picture's area): strokes, the ignore box, and moving a zoomed picture.
// Strokes start anywhere on the stage: one that starts just outside the picture paints from its edge.
import { endBox, showBox } from "./box.js";
import { beginStroke, endStroke, strokeTo, updateCursor } from "./brush.js";
import { el } from "./elements.js";
import { requestRender } from "./render.js";
import { S } from "./state.js";

// The working map's pixel under a client point (may lie outside the picture).
function toMap(clientX, clientY) {
  const r = el.canvas.getBoundingClientRect();
  return { x: ((clientX - r.left) * S.W) / r.width, y: ((clientY - r.top) * S.H) / r.height };
}

// Over the viewport's scroll bars, or a message: not a stroke.
function offPicture(e) {
  if (e.target.closest(".messages, button, a, input, select, label")) return true;
  const vr = el.viewport.getBoundingClientRect();
  const inside = e.clientX >= vr.left && e.clientX <= vr.right && e.clientY >= vr.top && e.clientY <= vr.bottom;
  return inside && (e.clientX >= vr.left + el.viewport.clientWidth || e.clientY >= vr.top + el.viewport.clientHeight);
}

function pointerDown(e) {
  if (!S.item || S.stroke || S.box || S.pan || offPicture(e)) return;
  const panning = S.spaceDown || (e.pointerType === "mouse" && e.button === 1);
  if (!panning && e.pointerType === "mouse" && e.button !== 0) return;
  e.preventDefault();
  try { el.dropzone.setPointerCapture(e.pointerId); } catch (_) { /* the pointer went away */ }
  if (panning) {
    S.pan = { pointerId: e.pointerId, x: e.clientX, y: e.clientY, left: el.viewport.scrollLeft, top: el.viewport.scrollTop };
    el.dropzone.classList.add("panning");
    el.brushCursor.hidden = true;
    return;
  }
  const p = toMap(e.clientX, e.clientY);
  if (S.tool === "box") {
    const x = Math.min(S.W, Math.max(0, p.x)), y = Math.min(S.H, Math.max(0, p.y));
    S.box = { pointerId: e.pointerId, x0: x, y0: y, x1: x, y1: y };
    showBox();
    return;
  }
  beginStroke(p.x, p.y, e.pointerId);
  updateCursor(e.clientX, e.clientY);
}

function pointerMove(e) {
  if (S.pan && e.pointerId === S.pan.pointerId) {
    el.viewport.scrollLeft = S.pan.left - (e.clientX - S.pan.x);
    el.viewport.scrollTop = S.pan.top - (e.clientY - S.pan.y);
    return;
  }
  if (e.pointerType !== "touch") updateCursor(e.clientX, e.clientY);
  if (S.box && e.pointerId === S.box.pointerId) {
    const p = toMap(e.clientX, e.clientY);
    S.box.x1 = p.x; S.box.y1 = p.y;
    showBox();
    return;
  }
  if (!S.stroke || e.pointerId !== S.stroke.pointerId) return;
  const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
  for (const ev of events.length ? events : [e]) {
    const p = toMap(ev.clientX, ev.clientY);
    strokeTo(p.x, p.y);
  }
  requestRender();
}

// Up, cancelled or lost: a pan ends, a box or stroke ends (only an up paints its last point or sets the box).
function finishPointer(e) {
  if (S.pan && e.pointerId === S.pan.pointerId) {
    S.pan = null;
    el.dropzone.classList.remove("panning");
    return;
  }
  if (S.box && e.pointerId === S.box.pointerId) {
    if (e.type === "pointerup") endBox();
    else { S.box = null; el.boxPreview.hidden = true; }
    return;
  }
  if (!S.stroke || e.pointerId !== S.stroke.pointerId) return;
  if (e.type === "pointerup") {
    const p = toMap(e.clientX, e.clientY);
    strokeTo(p.x, p.y);
  }
  endStroke();
  requestRender();
}

export function wireStage() {
  el.dropzone.addEventListener("pointerdown", pointerDown);
  el.dropzone.addEventListener("pointermove", pointerMove);
  el.dropzone.addEventListener("pointerup", finishPointer);
  el.dropzone.addEventListener("pointercancel", finishPointer);
  el.dropzone.addEventListener("lostpointercapture", finishPointer);
  el.dropzone.addEventListener("pointerenter", () => { S.overStage = true; });
  el.dropzone.addEventListener("pointerleave", () => {
    S.overStage = false;
    if (!S.stroke) el.brushCursor.hidden = true;
  });
  el.dropzone.addEventListener("contextmenu", (e) => { if (S.item) e.preventDefault(); });
}
