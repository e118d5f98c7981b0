// What the canvas shows: the picture, and over it the map as the View options say (shown or not, at the
// working or the model's resolution, in which style, how opaque). Pixels the expert has not decided are faded.
import { el } from "./elements.js";
import { areaDown, blocksUp } from "./maps.js";
import { drawOverlay, MAP_STYLES } from "./overlay.js";
import { S } from "./state.js";

const MAP_STYLE = "abn-editor-map-style"; // localStorage: the map style the expert chose last
const ctx = el.canvas.getContext("2d");
const styleInputs = () => [el.styleColours, el.styleOutline, el.styleHue];

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
  drawOverlay(S.mapStyle, S.overlayData.data, src, S.decided, S.confirmed, W, H);
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

// The map's style (overlay.js), remembered in this browser when the expert chooses it.
function setMapStyle(style, chosen) {
  S.mapStyle = MAP_STYLES.includes(style) ? style : MAP_STYLES[0];
  for (const input of styleInputs()) input.checked = input.value === S.mapStyle;
  el.legend.dataset.style = S.mapStyle;
  if (chosen) localStorage.setItem(MAP_STYLE, S.mapStyle);
  requestRender();
}
export function nextMapStyle() {
  setMapStyle(MAP_STYLES[(MAP_STYLES.indexOf(S.mapStyle) + 1) % MAP_STYLES.length], true);
}

export function wireView() {
  el.showMap.addEventListener("change", requestRender);
  el.opacity.addEventListener("input", () => { el.opacityValue.textContent = el.opacity.value; requestRender(); });
  el.preview.addEventListener("change", previewChanged);
  el.opacityValue.textContent = el.opacity.value;
  for (const input of styleInputs()) {
    input.addEventListener("change", () => { if (input.checked) setMapStyle(input.value, true); });
  }
  setMapStyle(localStorage.getItem(MAP_STYLE), false);
}
