// The page's elements, by id: el.fooBar is the element with id "foo-bar".

export const el = {};
for (const id of [
  "expert-name", "signout", "progress", "tab-queue", "tab-mine", "queue-panel", "mine-panel", "mine-totals",
  "mine-list", "mine-empty", "filter-model", "filter-label", "refresh", "next", "queue", "queue-empty", "upload",
  "error", "error-message", "error-dismiss", "status", "item-info", "lease", "reclaim", "dropzone", "empty",
  "viewport", "canvas-wrap", "canvas", "brush-cursor", "box-preview", "drop-hint", "zoom-out", "zoom-fit",
  "zoom-in", "zoom-value", "zoom-hint", "confirm-map", "try", "skip", "submit", "submit-note", "auto-next",
  "tool-attend", "tool-ignore", "tool-ignore-box", "brush-size", "brush-size-value", "brush-edge",
  "class-list", "use-predicted", "label-note", "contrast-panel", "window-width", "window-width-value",
  "window-level", "window-level-value", "contrast-auto", "contrast-reset", "show-map", "preview", "opacity",
  "opacity-value", "style-colours", "style-outline", "style-hue", "legend", "undo", "redo", "reset", "clear",
  "scores-old", "scores-new", "scores-new-note", "ask", "ask-text", "ask-yes", "ask-no", "shortcuts", "skip-to-tools",
  "tools",
]) el[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
