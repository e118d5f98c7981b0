// Keyboard shortcuts (the page's Shortcuts panel lists them), the panel itself, and the skip link. Shortcuts
// work wherever the focus is (a list, a slider, a button), except in a text box.
import { chooseClass } from "./classes.js";
import { openNext } from "./claims.js";
import { skip, submit, tryIt } from "./correction.js";
import { el } from "./elements.js";
import { redo, undo } from "./history.js";
import { clearError } from "./messages.js";
import { nextMapStyle, toggleMap, togglePreview } from "./render.js";
import { S } from "./state.js";
import { setEdge, setSizeIndex, setTool } from "./tools.js";
import { fitPicture, zoomIn, zoomOut } from "./zoom.js";

const TEXT_INPUTS = new Set(["text", "password", "search", "email", "url", "tel", "number"]);
function isTyping(t) {
  if (!t || t === document.body) return false;
  if (t.isContentEditable || t.tagName === "TEXTAREA") return true;
  return t.tagName === "INPUT" && TEXT_INPUTS.has((t.type || "text").toLowerCase());
}
const onControl = (t) => !!t && t !== document.body && !!t.closest("button, input, select, summary, a, [role=tab]");

const ACTIONS = {
  n: () => openNext(false),
  a: () => setTool("attend"),
  i: () => setTool("ignore"),
  r: () => setTool("box"),
  e: () => setEdge(S.edge === "soft" ? "hard" : "soft"),
  m: toggleMap,
  o: nextMapStyle,
  p: togglePreview,
  t: tryIt,
  s: skip,
  f: fitPicture,
  "+": zoomIn,
  "=": zoomIn,
  "-": zoomOut,
};

function keyDown(e) {
  if (e.defaultPrevented || e.isComposing || el.ask.open) return;
  if (e.key === "Escape") {
    if (el.shortcuts.open) el.shortcuts.open = false;
    else if (!el.error.hidden) clearError();
    return;
  }
  if (isTyping(e.target)) return;
  const ctrl = e.ctrlKey || e.metaKey;
  const key = (e.key || "").toLowerCase();
  if (ctrl && !e.altKey) {
    if (e.code === "KeyZ" || key === "z") { e.preventDefault(); if (e.shiftKey) redo(); else undo(); }
    else if (e.code === "KeyY" || key === "y") { e.preventDefault(); redo(); }
    else if (e.key === "Enter") { e.preventDefault(); if (!e.repeat) submit(); }
    return;
  }
  if (e.altKey) return;
  if (e.code === "BracketLeft" || e.key === "[" || e.key === "{") { e.preventDefault(); setSizeIndex(S.sizeIndex - (e.shiftKey ? 3 : 1), true); return; }
  if (e.code === "BracketRight" || e.key === "]" || e.key === "}") { e.preventDefault(); setSizeIndex(S.sizeIndex + (e.shiftKey ? 3 : 1), true); return; }
  // Space held over the picture (or with no control focused) moves it; on a control it keeps its meaning
  if (e.key === " " && S.item && (S.overStage || !onControl(e.target))) {
    e.preventDefault();
    if (!S.spaceDown) { S.spaceDown = true; el.dropzone.classList.add("can-pan"); el.brushCursor.hidden = true; }
    return;
  }
  if (e.repeat) return;
  if (/^[0-9]$/.test(e.key)) {
    e.preventDefault();
    const input = el.classList.querySelectorAll("input")[Number(e.key)];
    if (input) chooseClass(input.value);
    return;
  }
  if (ACTIONS[key]) { e.preventDefault(); ACTIONS[key](); }
}

export function wireKeys() {
  document.addEventListener("keydown", keyDown);
  document.addEventListener("keyup", (e) => {
    if (e.key === " " && S.spaceDown) {
      e.preventDefault(); // a focused button is not pressed by the Space that moved the picture
      S.spaceDown = false;
      el.dropzone.classList.remove("can-pan");
    }
  });
  window.addEventListener("blur", () => { S.spaceDown = false; el.dropzone.classList.remove("can-pan"); });
  // The shortcuts help closes on a click elsewhere.
  document.addEventListener("click", (e) => {
    if (el.shortcuts.open && !el.shortcuts.contains(e.target)) el.shortcuts.open = false;
  });
  // The skip link takes the keyboard to the tools.
  el.skipToTools.addEventListener("click", (e) => { e.preventDefault(); el.tools.focus(); });
}
