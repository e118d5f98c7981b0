// The ignore box: the pixels from the one under its first corner to the one under its last, both included
// (working pixels, clamped to the picture), set to 0 and decided.
import { el } from "./elements.js";
import { decisionMade, snapshot } from "./history.js";
import { setStatus } from "./messages.js";
import { S } from "./state.js";

function boxRect(b) {
  const span = (a, c, n) => [Math.max(0, Math.floor(Math.min(a, c))), Math.min(n, Math.floor(Math.max(a, c)) + 1)];
  const [x0, x1] = span(b.x0, b.x1, S.W), [y0, y1] = span(b.y0, b.y1, S.H);
  return { x0, y0, x1, y1 };
}
export function showBox() {
  const b = boxRect(S.box), f = el.canvas.getBoundingClientRect().width / S.W;
  Object.assign(el.boxPreview.style, {
    left: b.x0 * f + "px", top: b.y0 * f + "px", width: (b.x1 - b.x0) * f + "px", height: (b.y1 - b.y0) * f + "px",
  });
  el.boxPreview.hidden = false;
}
export function endBox() {
  const b = boxRect(S.box);
  S.box = null;
  el.boxPreview.hidden = true;
  if (b.x1 <= b.x0 || b.y1 <= b.y0) return;
  const snap = snapshot();
  for (let y = b.y0; y < b.y1; y++) {
    S.map.fill(0, y * S.W + b.x0, y * S.W + b.x1);
    S.decided.fill(1, y * S.W + b.x0, y * S.W + b.x1);
  }
  decisionMade(snap);
  setStatus("Ignore box: " + Math.round((b.x1 - b.x0) / (S.W / S.iw)) + " × " + Math.round((b.y1 - b.y0) / (S.H / S.ih)) + " pixels of the image set to ignore");
}
