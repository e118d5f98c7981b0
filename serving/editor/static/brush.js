// The brush: a stroke paints the map toward 1 (attend) or 0 (ignore) and decides the pixels under its
// circle, the circle the cursor shows. The soft brush paints fully to SOFT_FULL·r, half at r (the circle: what
// it decides) and fades out by SOFT_REACH·r (the faint outer ring).
import { el } from "./elements.js";
import { decisionMade, snapshot } from "./history.js";
import { requestRender } from "./render.js";
import { S } from "./state.js";

export const SIZES = [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64]; // brush radii, image pixels
const SOFT_FULL = 0.6, SOFT_REACH = 1.4;

const radius = () => SIZES[S.sizeIndex] * (S.W / S.iw); // the brush radius in working pixels

function strengthAt(d, r, hard) {
  if (hard) return d <= r ? 1 : 0;
  if (d <= SOFT_FULL * r) return 1;
  if (d >= SOFT_REACH * r) return 0;
  return 0.5 * (1 + Math.cos((Math.PI * (d - SOFT_FULL * r)) / ((SOFT_REACH - SOFT_FULL) * r)));
}

function dab(cx, cy) {
  const st = S.stroke, W = S.W, H = S.H, r = st.radius, reach = st.hard ? r : r * SOFT_REACH;
  const x0 = Math.max(0, Math.floor(cx - reach - 1)), x1 = Math.min(W - 1, Math.ceil(cx + reach + 1));
  const y0 = Math.max(0, Math.floor(cy - reach - 1)), y1 = Math.min(H - 1, Math.ceil(cy + reach + 1));
  const { before, strength, target } = st, map = S.map, decided = S.decided;
  for (let y = y0; y <= y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx;
      // to the pixel's near side, so that even the smallest brush paints the pixel under the pointer
      const s = strengthAt(Math.max(0, Math.sqrt(dx * dx + dy * dy) - 0.5), r, st.hard);
      const i = y * W + x;
      if (s > strength[i]) {
        strength[i] = s;
        map[i] = before[i] + (target - before[i]) * s;
        if (s > 0.5 && !decided[i]) decided[i] = 1;
        st.changed = true;
      }
    }
  }
}

// x, y: working-map pixels (may lie outside the picture)
export function strokeTo(x, y) {
  const st = S.stroke;
  const dx = x - st.lastX, dy = y - st.lastY;
  const steps = Math.max(1, Math.ceil(Math.sqrt(dx * dx + dy * dy) / Math.max(0.25, st.radius / 4)));
  for (let k = 1; k <= steps; k++) dab(st.lastX + (dx * k) / steps, st.lastY + (dy * k) / steps);
  st.lastX = x; st.lastY = y;
}

export function beginStroke(x, y, pointerId) {
  S.stroke = {
    pointerId,
    snap: snapshot(),
    before: S.map.slice(),
    strength: new Float32Array(S.W * S.H),
    target: S.tool === "ignore" ? 0 : 1,
    radius: radius(),
    hard: S.edge === "hard",
    lastX: x, lastY: y,
    changed: false,
  };
  dab(x, y);
  requestRender();
}

export function endStroke() {
  const st = S.stroke;
  if (!st) return;
  S.stroke = null;
  if (st.changed) decisionMade(st.snap);
}

// ------------------------------------------------------------------ the cursor
function cursorDiameter() { return 2 * radius() * (el.canvas.getBoundingClientRect().width / S.W); }
export function updateCursorSize() {
  if (!S.item) return;
  const d = cursorDiameter();
  el.brushCursor.style.width = d + "px";
  el.brushCursor.style.height = d + "px";
}
export function updateCursor(clientX, clientY) {
  if (!S.item || S.tool === "box" || S.pan || S.spaceDown) { el.brushCursor.hidden = true; return; }
  const wr = el.canvasWrap.getBoundingClientRect();
  updateCursorSize();
  el.brushCursor.style.left = clientX - wr.left + "px";
  el.brushCursor.style.top = clientY - wr.top + "px";
  el.brushCursor.hidden = false;
}
