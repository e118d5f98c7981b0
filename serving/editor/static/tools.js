// The tool (attend brush, ignore brush, ignore box), the brush's radius and its edge.
import { SIZES, updateCursorSize } from "./brush.js";
import { el } from "./elements.js";
import { S } from "./state.js";

export function setTool(t) {
  S.tool = t === "ignore" || t === "box" ? t : "attend";
  el.toolAttend.checked = S.tool === "attend";
  el.toolIgnore.checked = S.tool === "ignore";
  el.toolIgnoreBox.checked = S.tool === "box";
  el.brushCursor.classList.toggle("ignore", S.tool === "ignore");
  el.dropzone.classList.toggle("box-tool", S.tool === "box");
  if (S.tool === "box") el.brushCursor.hidden = true;
}
// chosen: by the expert, so remembered for pictures of this size
export function setSizeIndex(i, chosen) {
  S.sizeIndex = Math.min(SIZES.length - 1, Math.max(0, Math.round(Number(i) || 0)));
  el.brushSize.value = String(S.sizeIndex);
  const px = SIZES[S.sizeIndex];
  el.brushSizeValue.textContent = px + " px";
  el.brushSize.setAttribute("aria-valuetext", "radius " + px + " pixels of the image");
  if (chosen && S.item) S.sizeFor[S.iw + "x" + S.ih] = S.sizeIndex;
  updateCursorSize();
}
// A new picture size gets a brush of about a twentieth of its longer side, until the expert chooses one.
export function defaultSize() {
  const chosen = S.sizeFor[S.iw + "x" + S.ih];
  if (chosen !== undefined) return chosen;
  const want = Math.max(S.iw, S.ih) / 20;
  let best = 0;
  SIZES.forEach((s, i) => { if (Math.abs(s - want) < Math.abs(SIZES[best] - want)) best = i; });
  return best;
}
export function setEdge(v) {
  S.edge = v === "hard" ? "hard" : "soft";
  el.brushEdge.value = S.edge;
  el.brushCursor.classList.toggle("hard", S.edge === "hard");
}

export function wireTools() {
  for (const input of [el.toolAttend, el.toolIgnore, el.toolIgnoreBox]) {
    input.addEventListener("change", () => { if (input.checked) setTool(input.value); });
  }
  el.brushSize.addEventListener("input", () => setSizeIndex(el.brushSize.value, true));
  el.brushEdge.addEventListener("change", () => setEdge(el.brushEdge.value));
  setTool("attend");
  setSizeIndex(el.brushSize.value, false);
  setEdge(el.brushEdge.value);
}
