// For tests and scripts that drive the page (tests/editor_driver.py): its state, and where an image pixel is
// on the screen.
import { SIZES } from "./brush.js";
import { el } from "./elements.js";
import { unsaved } from "./item.js";
import { S } from "./state.js";

// The value of the working map (or of another W*H array) at (x, y); null outside it or without an item.
const at = (values, x, y) => {
  if (!values) return null;
  x = Math.floor(x); y = Math.floor(y);
  return x < 0 || y < 0 || x >= S.W || y >= S.H ? null : values[y * S.W + x];
};

export function exposeTestHooks() {
  window.editorState = () => ({
    itemId: S.item && S.item.source === "queue" ? S.item.reviewId : null,
    source: S.item ? S.item.source : null,
    imageWidth: S.iw, imageHeight: S.ih,
    width: S.W, height: S.H,
    modelHeight: S.mh, modelWidth: S.mw,
    undoDepth: S.undo.length, redoDepth: S.redo.length,
    tool: S.tool, size: SIZES[S.sizeIndex], edge: S.edge, mapStyle: S.mapStyle,
    zoom: S.item ? (S.zoom * S.W) / S.iw : 0,
    label: S.label, confirmed: S.confirmed,
    decided: S.decided ? S.decided.reduce((a, b) => a + b, 0) : 0,
    unsaved: unsaved(),
    grey: !!S.grey,
    busy: Object.values(S.busy).some(Boolean),
  });
  window.editorMapAt = (x, y) => at(S.map, x, y);
  window.editorDecidedAt = (x, y) => at(S.decided, x, y);
  // The client (viewport) point at the centre of image pixel (x, y); x, y may be fractional or outside.
  window.editorClientPoint = (x, y) => {
    if (!S.item) return null;
    const r = el.canvas.getBoundingClientRect();
    return { x: r.left + ((x + 0.5) * r.width) / S.iw, y: r.top + ((y + 0.5) * r.height) / S.ih };
  };
  // The share of the canvas's pixels the map visibly changes (a channel off the picture's by more than 12).
  window.editorMapCover = () => {
    if (!S.item) return null;
    const shown = el.canvas.getContext("2d").getImageData(0, 0, S.W, S.H).data;
    const base = S.base.getContext("2d").getImageData(0, 0, S.W, S.H).data;
    let changed = 0;
    for (let j = 0; j < shown.length; j += 4) {
      const off = Math.max(Math.abs(shown[j] - base[j]), Math.abs(shown[j + 1] - base[j + 1]), Math.abs(shown[j + 2] - base[j + 2]));
      if (off > 12) changed++;
    }
    return changed / (S.W * S.H);
  };
  window.editorBaseAt = (x, y) => (S.base.getContext("2d").getImageData(Math.floor(x), Math.floor(y), 1, 1).data[0]);
  window.editorPictureAt = (x, y) => [...S.base.getContext("2d").getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3)];
}
