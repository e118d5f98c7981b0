// The picture at the working size, and window and level for a greyscale one: grey values in
// [level - window/2, level + window/2] spread from black to white.
import { el } from "./elements.js";
import { clamp01 } from "./maps.js";
import { requestRender } from "./render.js";
import { S } from "./state.js";

function contrastLut() {
  const w = Number(el.windowWidth.value), l = Number(el.windowLevel.value), lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) lut[v] = clamp01((v - (l - w / 2)) / w) * 255;
  return lut;
}
function drawBase() {
  if (!S.grey) return;
  const lut = contrastLut(), data = new ImageData(S.W, S.H), d = data.data;
  for (let i = 0, n = S.W * S.H; i < n; i++) {
    const v = lut[S.grey[i]], j = i * 4;
    d[j] = v; d[j + 1] = v; d[j + 2] = v; d[j + 3] = 255;
  }
  S.base.getContext("2d").putImageData(data, 0, 0);
  el.windowWidthValue.textContent = el.windowWidth.value;
  el.windowLevelValue.textContent = el.windowLevel.value;
  requestRender();
}
function setContrast(width, level) {
  el.windowWidth.value = String(Math.round(width));
  el.windowLevel.value = String(Math.round(level * 2) / 2);
  drawBase();
}
function autoContrast() {
  if (!S.grey) return;
  const hist = new Uint32Array(256);
  for (const v of S.grey) hist[v]++;
  const n = S.grey.length;
  let lo = 0, hi = 255, seen = 0;
  for (let v = 0; v < 256; v++) { seen += hist[v]; if (seen > n * 0.01) { lo = v; break; } }
  seen = 0;
  for (let v = 255; v >= 0; v--) { seen += hist[v]; if (seen > n * 0.01) { hi = v; break; } }
  setContrast(Math.max(1, hi - lo), (lo + hi) / 2);
}

// The picture at the working size; a greyscale one keeps its grey values for window and level.
export function setBase(img) {
  const bctx = S.base.getContext("2d", { willReadFrequently: true });
  bctx.imageSmoothingEnabled = true;
  bctx.imageSmoothingQuality = "high";
  bctx.fillStyle = "#000";
  bctx.fillRect(0, 0, S.W, S.H);
  bctx.drawImage(img, 0, 0, S.W, S.H);
  const d = bctx.getImageData(0, 0, S.W, S.H).data;
  let grey = true;
  for (let j = 0; j < d.length && grey; j += 4) grey = Math.abs(d[j] - d[j + 1]) <= 2 && Math.abs(d[j + 1] - d[j + 2]) <= 2;
  S.grey = null;
  if (grey) {
    S.grey = new Uint8Array(S.W * S.H);
    for (let i = 0; i < S.grey.length; i++) S.grey[i] = d[i * 4];
    setContrast(256, 128);
  }
  el.contrastPanel.hidden = !grey;
}

export function wireContrast() {
  el.windowWidth.addEventListener("input", drawBase);
  el.windowLevel.addEventListener("input", drawBase);
  el.contrastAuto.addEventListener("click", autoContrast);
  el.contrastReset.addEventListener("click", () => setContrast(256, 128));
}
