// What the canvas shows: the picture, and over it the map as the View options say (shown or not, at the
// working or the model's resolution, how opaque). Pixels the expert has not decided are faded.
import { el } from "./elements.js";
import { areaDown, blocksUp, clamp01, JET } from "./maps.js";
import { S } from "./state.js";

const FADED = 110; // overlay alpha (of 255) of pixels the expert has not decided
const ctx = el.canvas.getContext("2d");

// At most one drawing per frame, however many changes come before it.
export function requestRender() {
  if (S.renderQueued) return;
  S.renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  S.renderQueued = false;
  if (!S.item || !S.map) return;
  const W = S.W, H = S.H;
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, W, H);
  ctx.drawImage(S.base, 0, 0);
  if (!el.showMap.checked) return;
  const src = el.preview.checked ? blocksUp(areaDown(S.map, W, H, S.mw, S.mh), S.mw, S.mh, W, H) : S.map;
  const d = S.overlayData.data, decided = S.decided, all = S.confirmed;
  for (let i = 0, n = W * H; i < n; i++) {
    const c = Math.round(clamp01(src[i]) * 255) * 3, j = i * 4;
    d[j] = JET[c]; d[j + 1] = JET[c + 1]; d[j + 2] = JET[c + 2];
    d[j + 3] = all || decided[i] ? 255 : FADED;
  }
  S.overlay.getContext("2d").putImageData(S.overlayData, 0, 0);
  ctx.globalAlpha = Number(el.opacity.value) / 100;
  ctx.drawImage(S.overlay, 0, 0);
  ctx.globalAlpha = 1;
}

export function toggleMap() {
  el.showMap.checked = !el.showMap.checked;
  requestRender();
}
// The preview shows the map: turning it on shows the map too.
function previewChanged() {
  if (el.preview.checked) el.showMap.checked = true;
  requestRender();
}
export function togglePreview() {
  el.preview.checked = !el.preview.checked;
  previewChanged();
}

export function wireView() {
  el.showMap.addEventListener("change", requestRender);
  el.opacity.addEventListener("input", () => { el.opacityValue.textContent = el.opacity.value; requestRender(); });
  el.preview.addEventListener("change", previewChanged);
  el.opacityValue.textContent = el.opacity.value;
}
