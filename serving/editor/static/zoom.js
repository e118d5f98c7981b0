// Zoom and pan. The canvas holds the working map; its CSS size is the zoom. The viewport scrolls a picture
// larger than it (the stage's pointer code moves it with Space or the middle button).
import { updateCursorSize } from "./brush.js";
import { el } from "./elements.js";
import { S } from "./state.js";

const FIT_MAX = 3; // the most screen pixels per map pixel when fitting a small picture
const ZOOM_STEP = 1.25;
const MAX_CSS_SIDE = 8192; // the largest zoomed picture, in CSS pixels

function fitZoom() {
  const vw = el.viewport.clientWidth, vh = el.viewport.clientHeight;
  if (!S.W || vw <= 0 || vh <= 0) return 1;
  return Math.min(FIT_MAX, (vw - 2) / S.W, (vh - 2) / S.H);
}
const maxZoom = () => Math.max(S.fit, Math.min(32, MAX_CSS_SIDE / Math.max(S.W, S.H)));

function setZoom(z, clientX, clientY) {
  if (!S.item) return;
  const r = el.canvas.getBoundingClientRect();
  const vr = el.viewport.getBoundingClientRect();
  const cx = clientX === undefined ? vr.left + el.viewport.clientWidth / 2 : clientX;
  const cy = clientY === undefined ? vr.top + el.viewport.clientHeight / 2 : clientY;
  const p = r.width ? { x: ((cx - r.left) * S.W) / r.width, y: ((cy - r.top) * S.H) / r.height } : null;
  S.zoom = Math.min(maxZoom(), Math.max(S.fit / 2, z));
  el.canvas.style.width = S.W * S.zoom + "px";
  el.canvas.style.height = S.H * S.zoom + "px";
  el.canvas.classList.toggle("pixelated", S.zoom >= 4); // zoomed in far: show the map's pixels as squares
  if (p) {  // keep the point under the pointer (or the centre) where it was
    const n = el.canvas.getBoundingClientRect();
    el.viewport.scrollLeft += n.left + p.x * S.zoom - cx;
    el.viewport.scrollTop += n.top + p.y * S.zoom - cy;
  }
  const perImagePixel = (S.zoom * S.W) / S.iw;
  el.zoomValue.textContent = Math.round(perImagePixel * 100) + "%";
  el.zoomHint.hidden = !(S.W * S.zoom > el.viewport.clientWidth + 1 || S.H * S.zoom > el.viewport.clientHeight + 1);
  updateCursorSize();
}
function zoomBy(f, clientX, clientY) { setZoom(S.zoom * f, clientX, clientY); }
export const zoomIn = () => zoomBy(ZOOM_STEP);
export const zoomOut = () => zoomBy(1 / ZOOM_STEP);
export function fitPicture() {
  S.fit = fitZoom();
  setZoom(S.fit);
}

// A picture shown fitted stays fitted when the window changes size.
function onResize() {
  if (!S.item) return;
  const wasFit = Math.abs(S.zoom - S.fit) < 1e-6;
  S.fit = fitZoom();
  if (wasFit) setZoom(S.fit);
}

export function wireZoom() {
  el.zoomIn.addEventListener("click", zoomIn);
  el.zoomOut.addEventListener("click", zoomOut);
  el.zoomFit.addEventListener("click", fitPicture);
  el.viewport.addEventListener("wheel", (e) => {
    if (!S.item || !(e.ctrlKey || e.metaKey)) return; // a plain wheel scrolls the picture
    e.preventDefault();
    zoomBy(e.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, e.clientX, e.clientY);
  }, { passive: false });
  if (typeof ResizeObserver === "function") new ResizeObserver(onResize).observe(el.viewport);
}
