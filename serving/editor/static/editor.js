"use strict";
// Attention editor: the page a domain expert uses to correct an Attention Branch
// Network's attention map by painting. Plain ES2020, no dependencies.
//
// A correction says what the expert decided and only that: every stroke marks the
// pixels under its circle as decided (S.decided); the rest stays "don't care".
// Clear and Reset decide the whole map; "The map is right" confirms the model's map
// as it is. Nothing can be submitted before one of these, nor before the expert
// chose the class.
(() => {
  const $ = (id) => document.getElementById(id);

  const WORK_MIN_SIDE = 256; // the working map's longest side: at least this (small images are painted finer)
  const WORK_MAX_SIDE = 1024; // ...and at most this (the API's largest map)
  const FIT_MAX = 3; // the most screen pixels per map pixel when fitting a small picture
  const ZOOM_STEP = 1.25;
  const MAX_CSS_SIDE = 8192; // the largest zoomed picture, in CSS pixels
  const UNDO_BYTES = 64e6; // memory for undo snapshots (map and mask)
  const QUEUE_LIMIT = 50;
  const QUEUE_AUTO_REFRESH_MS = 30000;
  const SIZES = [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64]; // brush radii, image pixels
  // The soft brush paints fully to SOFT_FULL·r, half at r (the circle the cursor shows: what it decides) and
  // fades out by SOFT_REACH·r (the faint outer ring).
  const SOFT_FULL = 0.6, SOFT_REACH = 1.4;
  const FADED = 110; // overlay alpha (of 255) of pixels the expert has not decided

  // ---------------------------------------------------------------- elements
  const el = {};
  for (const id of [
    "expert-name", "signout", "progress", "tab-queue", "tab-mine", "queue-panel", "mine-panel", "mine-totals",
    "mine-list", "mine-empty", "filter-model", "filter-label", "refresh", "next", "queue", "queue-empty", "upload",
    "error", "error-message", "error-dismiss", "status", "item-info", "lease", "reclaim", "dropzone", "empty",
    "viewport", "canvas-wrap", "canvas", "brush-cursor", "box-preview", "drop-hint", "zoom-out", "zoom-fit",
    "zoom-in", "zoom-value", "zoom-hint", "confirm-map", "try", "skip", "submit", "submit-note", "auto-next",
    "tool-attend", "tool-ignore", "tool-ignore-box", "brush-size", "brush-size-value", "brush-edge",
    "class-list", "use-predicted", "label-note", "contrast-panel", "window-width", "window-width-value",
    "window-level", "window-level-value", "contrast-auto", "contrast-reset", "show-map", "preview", "opacity",
    "opacity-value", "undo", "redo", "reset", "clear", "scores-old", "scores-new", "scores-new-note", "ask",
    "ask-text", "ask-yes", "ask-no", "shortcuts",
  ]) el[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = $(id);
  const ctx = el.canvas.getContext("2d");

  // ------------------------------------------------------------------- state
  const S = {
    models: [], // [{name, classes}]
    item: null, // the open item (see openItem)
    iw: 0, ih: 0, // the image's size
    W: 0, H: 0, // the working map's size; k = W / iw working pixels per image pixel
    mh: 0, mw: 0, // the model's map size
    modelUp: null, // Float32Array W*H: the model's map, bilinear-upsampled
    map: null, // Float32Array W*H: the working map
    decided: null, // Uint8Array W*H: 1 where the expert decided the value
    decidedAny: false,
    confirmed: false, // "The map is right" pressed
    label: null, // the class the expert chose; null until they choose
    undo: [], redo: [], maxUndo: 50,
    stroke: null, box: null, pan: null,
    tool: "attend", sizeIndex: 10, edge: "soft", sizeFor: {},
    zoom: 1, fit: 1,
    spaceDown: false, overStage: false,
    grey: null, // Uint8Array W*H of a greyscale picture's values, for window/level; null for colour
    busy: { open: false, submit: false, tryIt: false, skip: false, reclaim: false },
    openSeq: 0,
    clockSkewMs: 0, // server clock minus this clock, from the Date header
    base: document.createElement("canvas"), // the picture at the working size, contrast applied
    overlay: document.createElement("canvas"),
    overlayData: null,
    renderQueued: false,
    left: null, doneToday: null,
    leaving: false, // signing out or sent to sign in: no question on the way
  };

  // ------------------------------------------------------------------ errors
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  class SignedOut extends Error {}

  function statusWords(status) {
    if (status === 400) return "The service could not use this request.";
    if (status === 403) return "You are not allowed to do this.";
    if (status === 404) return "Not found. It may have been removed.";
    if (status === 409) return "Someone else has changed this item, or your claim on it has expired.";
    if (status === 413) return "The image is too large.";
    if (status === 429) return "Too many requests. Wait a moment and try again.";
    if (status === 502 || status === 503 || status === 504) return "The service is unavailable right now. Try again in a moment.";
    if (status >= 500) return "The service had an internal problem. Try again in a moment.";
    return "The request failed (HTTP " + status + ").";
  }

  function detailOf(data, status) {
    if (data && typeof data.detail === "string" && data.detail.trim()) return data.detail;
    return statusWords(status);
  }

  function noteServerClock(res) {
    const server = Date.parse(res.headers.get("Date") || "");
    if (Number.isNaN(server)) return;
    const skew = server - Date.now();
    // The header has one-second resolution: only correct a clock that is clearly off.
    S.clockSkewMs = Math.abs(skew) > 3000 ? skew : 0;
  }

  async function api(method, path, body, keepalive) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, keepalive: !!keepalive };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      if (body !== undefined) init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "Cannot reach the service. Check the network connection and try again.");
    }
    noteServerClock(res);
    if (res.status === 401) {
      S.leaving = true;
      location.assign("/");
      throw new SignedOut("signed out");
    }
    let data = null;
    if (res.status !== 204) {
      const text = await res.text().catch(() => "");
      if (text) {
        try { data = JSON.parse(text); } catch (_) { data = null; }
      }
    }
    if (!res.ok) throw new ApiError(res.status, detailOf(data, res.status));
    return data;
  }

  // Messages float over the top of the picture: they never move it.
  function showError(err, kind) {
    if (err instanceof SignedOut) return;
    const text = typeof err === "string" ? err : (err && err.message) || "Something went wrong.";
    el.errorMessage.textContent = text;
    el.error.classList.toggle("info", kind === "info");
    el.error.hidden = false;
  }
  function clearError() {
    el.error.hidden = true;
    el.errorMessage.textContent = "";
  }
  function setStatus(text) { el.status.textContent = text; }

  // An in-page question (a modal dialog): resolves true for yes.
  function ask(question, yes, no) {
    return new Promise((resolve) => {
      el.askText.textContent = question;
      el.askYes.textContent = yes;
      el.askNo.textContent = no;
      const done = (answer) => {
        el.askYes.removeEventListener("click", onYes);
        el.askNo.removeEventListener("click", onNo);
        el.ask.removeEventListener("close", onClose);
        if (el.ask.open) el.ask.close();
        resolve(answer);
      };
      const onYes = () => done(true), onNo = () => done(false), onClose = () => done(false);
      el.askYes.addEventListener("click", onYes);
      el.askNo.addEventListener("click", onNo);
      el.ask.addEventListener("close", onClose);
      el.ask.showModal();
      el.askNo.focus();
    });
  }

  // ------------------------------------------------------------- map maths
  const clamp01 = (v) => (v < 0 ? 0 : v > 1 ? 1 : v);

  function workingSize(iw, ih) {
    const long = Math.max(iw, ih);
    const f = Math.min(WORK_MAX_SIDE, Math.max(WORK_MIN_SIDE, long)) / long;
    return [Math.max(2, Math.round(iw * f)), Math.max(2, Math.round(ih * f))];
  }

  // Bilinear upsampling (pixel centres aligned, edges clamped).
  function bilinear(src, sw, sh, dw, dh) {
    const out = new Float32Array(dw * dh);
    for (let y = 0; y < dh; y++) {
      const sy = Math.min(Math.max(((y + 0.5) * sh) / dh - 0.5, 0), sh - 1);
      const y0 = Math.floor(sy), y1 = Math.min(y0 + 1, sh - 1), fy = sy - y0;
      for (let x = 0; x < dw; x++) {
        const sx = Math.min(Math.max(((x + 0.5) * sw) / dw - 0.5, 0), sw - 1);
        const x0 = Math.floor(sx), x1 = Math.min(x0 + 1, sw - 1), fx = sx - x0;
        const top = src[y0 * sw + x0] * (1 - fx) + src[y0 * sw + x1] * fx;
        const bot = src[y1 * sw + x0] * (1 - fx) + src[y1 * sw + x1] * fx;
        out[y * dw + x] = clamp01(top * (1 - fy) + bot * fy);
      }
    }
    return out;
  }

  // For an area average from n inputs to m outputs: for each output, the inputs it covers and their weights.
  function areaWeights(n, m) {
    const scale = n / m, rows = [];
    for (let o = 0; o < m; o++) {
      const a = o * scale, b = (o + 1) * scale, row = [];
      for (let i = Math.floor(a); i < Math.min(n, Math.ceil(b)); i++) {
        const overlap = Math.min(b, i + 1) - Math.max(a, i);
        if (overlap > 1e-9) row.push(i, overlap / scale);
      }
      rows.push(row);
    }
    return rows;
  }

  // Area average of the working map down to the model's resolution.
  function areaDown(src, sw, sh, dw, dh) {
    const wx = areaWeights(sw, dw), wy = areaWeights(sh, dh);
    const tmp = new Float32Array(sh * dw);
    for (let y = 0; y < sh; y++) {
      for (let o = 0; o < dw; o++) {
        const row = wx[o];
        let s = 0;
        for (let k = 0; k < row.length; k += 2) s += src[y * sw + row[k]] * row[k + 1];
        tmp[y * dw + o] = s;
      }
    }
    const out = new Float32Array(dh * dw);
    for (let o = 0; o < dh; o++) {
      const row = wy[o];
      for (let x = 0; x < dw; x++) {
        let s = 0;
        for (let k = 0; k < row.length; k += 2) s += tmp[row[k] * dw + x] * row[k + 1];
        out[o * dw + x] = clamp01(s);
      }
    }
    return out;
  }

  // Nearest-neighbour blocks from the model's resolution back up to the working size.
  function blocksUp(src, sw, sh, dw, dh) {
    const out = new Float32Array(dw * dh);
    for (let y = 0; y < dh; y++) {
      const sy = Math.min(sh - 1, Math.floor((y * sh) / dh));
      for (let x = 0; x < dw; x++) out[y * dw + x] = src[sy * sw + Math.min(sw - 1, Math.floor((x * sw) / dw))];
    }
    return out;
  }

  const round3 = (v) => Math.round(v * 1000) / 1000;
  const roundedList = (arr) => Array.from(arr, round3);

  function base64Bytes(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  // Jet-like colour map: blue (0) → cyan → yellow → red (1).
  const JET = (() => {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const v = i / 255;
      lut[i * 3] = clamp01(Math.min(4 * v - 1.5, -4 * v + 4.5)) * 255;
      lut[i * 3 + 1] = clamp01(Math.min(4 * v - 0.5, -4 * v + 3.5)) * 255;
      lut[i * 3 + 2] = clamp01(Math.min(4 * v + 0.5, -4 * v + 2.5)) * 255;
    }
    return lut;
  })();

  function newKey() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -------------------------------------------------------------- rendering
  function requestRender() {
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

  // ------------------------------------------------------------ zoom and pan
  // The canvas holds the working map; its CSS size is the zoom. The viewport scrolls a picture larger than it.
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
  function fitPicture() {
    S.fit = fitZoom();
    setZoom(S.fit);
  }

  el.zoomIn.addEventListener("click", () => zoomBy(ZOOM_STEP));
  el.zoomOut.addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
  el.zoomFit.addEventListener("click", fitPicture);
  el.viewport.addEventListener("wheel", (e) => {
    if (!S.item || !(e.ctrlKey || e.metaKey)) return; // a plain wheel scrolls the picture
    e.preventDefault();
    zoomBy(e.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, e.clientX, e.clientY);
  }, { passive: false });
  function onResize() {
    if (!S.item) return;
    const wasFit = Math.abs(S.zoom - S.fit) < 1e-6;
    S.fit = fitZoom();
    if (wasFit) setZoom(S.fit);
  }

  // --------------------------------------------------------------- painting
  // The working map's pixel under a client point (may lie outside the picture).
  function toMap(clientX, clientY) {
    const r = el.canvas.getBoundingClientRect();
    return { x: ((clientX - r.left) * S.W) / r.width, y: ((clientY - r.top) * S.H) / r.height };
  }
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

  function strokeTo(x, y) {
    const st = S.stroke;
    const dx = x - st.lastX, dy = y - st.lastY;
    const steps = Math.max(1, Math.ceil(Math.sqrt(dx * dx + dy * dy) / Math.max(0.25, st.radius / 4)));
    for (let k = 1; k <= steps; k++) dab(st.lastX + (dx * k) / steps, st.lastY + (dy * k) / steps);
    st.lastX = x; st.lastY = y;
  }

  function snapshot() { return { map: S.map.slice(), decided: S.decided.slice(), confirmed: S.confirmed }; }

  function beginStroke(x, y, pointerId) {
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

  function endStroke() {
    const st = S.stroke;
    if (!st) return;
    S.stroke = null;
    if (st.changed) decisionMade(st.snap);
  }

  // The ignore box: the pixels from the one under its first corner to the one under its last, both included
  // (working pixels, clamped to the picture), set to 0 and decided.
  function boxRect(b) {
    const span = (a, c, n) => [Math.max(0, Math.floor(Math.min(a, c))), Math.min(n, Math.floor(Math.max(a, c)) + 1)];
    const [x0, x1] = span(b.x0, b.x1, S.W), [y0, y1] = span(b.y0, b.y1, S.H);
    return { x0, y0, x1, y1 };
  }
  function showBox() {
    const b = boxRect(S.box), f = el.canvas.getBoundingClientRect().width / S.W;
    Object.assign(el.boxPreview.style, {
      left: b.x0 * f + "px", top: b.y0 * f + "px", width: (b.x1 - b.x0) * f + "px", height: (b.y1 - b.y0) * f + "px",
    });
    el.boxPreview.hidden = false;
  }
  function endBox() {
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

  // Painting changes the map: a confirmation of the model's map no longer holds.
  function decisionMade(snap) {
    pushUndo(snap);
    S.confirmed = false;
    S.decidedAny = true;
    mapChanged();
  }

  function pushUndo(snap) {
    S.undo.push(snap);
    if (S.undo.length > S.maxUndo) S.undo.shift();
    S.redo = [];
  }
  function restore(snap) {
    S.map = snap.map; S.decided = snap.decided; S.confirmed = snap.confirmed;
    S.decidedAny = S.decided.includes(1);
    mapChanged();
  }

  function mapChanged() {
    if (el.scoresNew.childElementCount) {
      el.scoresNew.classList.add("stale");
      el.scoresNewNote.textContent = "The map has changed since. Try it again to update.";
    }
    updateControls();
    requestRender();
  }

  function undo() {
    if (!S.item || S.stroke || !S.undo.length) return;
    S.redo.push(snapshot());
    restore(S.undo.pop());
  }
  function redo() {
    if (!S.item || S.stroke || !S.redo.length) return;
    S.undo.push(snapshot());
    restore(S.redo.pop());
  }
  // Reset and Clear are decisions over the whole map.
  function wholeMap(values, words) {
    if (!S.item || S.stroke) return;
    const snap = snapshot();
    S.map = values;
    S.decided = new Uint8Array(S.W * S.H).fill(1);
    decisionMade(snap);
    setStatus(words);
  }
  const resetMap = () => S.item && wholeMap(S.modelUp.slice(), "The map is the model’s again, decided everywhere.");
  const clearMap = () => S.item && wholeMap(new Float32Array(S.W * S.H), "Map cleared: every pixel decided as ignore.");

  function confirmMap() {
    if (!S.item || S.decidedAny) return;
    S.confirmed = !S.confirmed;
    updateControls();
    requestRender();
    setStatus(S.confirmed ? "You confirmed the model’s map as right." + (S.label === null ? " Now choose the class." : "") : "Confirmation taken back.");
  }

  // ------------------------------------------------------- pointer on the stage
  function cursorDiameter() { return 2 * radius() * (el.canvas.getBoundingClientRect().width / S.W); }
  function updateCursorSize() {
    if (!S.item) return;
    const d = cursorDiameter();
    el.brushCursor.style.width = d + "px";
    el.brushCursor.style.height = d + "px";
  }
  function updateCursor(clientX, clientY) {
    if (!S.item || S.tool === "box" || S.pan || S.spaceDown) { el.brushCursor.hidden = true; return; }
    const wr = el.canvasWrap.getBoundingClientRect();
    updateCursorSize();
    el.brushCursor.style.left = clientX - wr.left + "px";
    el.brushCursor.style.top = clientY - wr.top + "px";
    el.brushCursor.hidden = false;
  }

  // Over the viewport's scroll bars, or a message: not a stroke.
  function offPicture(e) {
    if (e.target.closest(".messages, button, a, input, select, label")) return true;
    const vr = el.viewport.getBoundingClientRect();
    const inside = e.clientX >= vr.left && e.clientX <= vr.right && e.clientY >= vr.top && e.clientY <= vr.bottom;
    return inside && (e.clientX >= vr.left + el.viewport.clientWidth || e.clientY >= vr.top + el.viewport.clientHeight);
  }

  // Strokes start anywhere on the stage: one that starts just outside the picture paints from its edge.
  el.dropzone.addEventListener("pointerdown", (e) => {
    if (!S.item || S.stroke || S.box || S.pan || offPicture(e)) return;
    const panning = S.spaceDown || (e.pointerType === "mouse" && e.button === 1);
    if (!panning && e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    try { el.dropzone.setPointerCapture(e.pointerId); } catch (_) { /* the pointer went away */ }
    if (panning) {
      S.pan = { pointerId: e.pointerId, x: e.clientX, y: e.clientY, left: el.viewport.scrollLeft, top: el.viewport.scrollTop };
      el.dropzone.classList.add("panning");
      el.brushCursor.hidden = true;
      return;
    }
    const p = toMap(e.clientX, e.clientY);
    if (S.tool === "box") {
      const x = Math.min(S.W, Math.max(0, p.x)), y = Math.min(S.H, Math.max(0, p.y));
      S.box = { pointerId: e.pointerId, x0: x, y0: y, x1: x, y1: y };
      showBox();
      return;
    }
    beginStroke(p.x, p.y, e.pointerId);
    updateCursor(e.clientX, e.clientY);
  });
  el.dropzone.addEventListener("pointermove", (e) => {
    if (S.pan && e.pointerId === S.pan.pointerId) {
      el.viewport.scrollLeft = S.pan.left - (e.clientX - S.pan.x);
      el.viewport.scrollTop = S.pan.top - (e.clientY - S.pan.y);
      return;
    }
    if (e.pointerType !== "touch") updateCursor(e.clientX, e.clientY);
    if (S.box && e.pointerId === S.box.pointerId) {
      const p = toMap(e.clientX, e.clientY);
      S.box.x1 = p.x; S.box.y1 = p.y;
      showBox();
      return;
    }
    if (!S.stroke || e.pointerId !== S.stroke.pointerId) return;
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const p = toMap(ev.clientX, ev.clientY);
      strokeTo(p.x, p.y);
    }
    requestRender();
  });
  const finishPointer = (e) => {
    if (S.pan && e.pointerId === S.pan.pointerId) {
      S.pan = null;
      el.dropzone.classList.remove("panning");
      return;
    }
    if (S.box && e.pointerId === S.box.pointerId) {
      if (e.type === "pointerup") endBox();
      else { S.box = null; el.boxPreview.hidden = true; }
      return;
    }
    if (!S.stroke || e.pointerId !== S.stroke.pointerId) return;
    if (e.type === "pointerup") {
      const p = toMap(e.clientX, e.clientY);
      strokeTo(p.x, p.y);
    }
    endStroke();
    requestRender();
  };
  el.dropzone.addEventListener("pointerup", finishPointer);
  el.dropzone.addEventListener("pointercancel", finishPointer);
  el.dropzone.addEventListener("lostpointercapture", finishPointer);
  el.dropzone.addEventListener("pointerenter", () => { S.overStage = true; });
  el.dropzone.addEventListener("pointerleave", () => {
    S.overStage = false;
    if (!S.stroke) el.brushCursor.hidden = true;
  });
  el.dropzone.addEventListener("contextmenu", (e) => { if (S.item) e.preventDefault(); });

  // ------------------------------------------------------------ tools
  function setTool(t) {
    S.tool = t === "ignore" || t === "box" ? t : "attend";
    el.toolAttend.checked = S.tool === "attend";
    el.toolIgnore.checked = S.tool === "ignore";
    el.toolIgnoreBox.checked = S.tool === "box";
    el.brushCursor.classList.toggle("ignore", S.tool === "ignore");
    el.dropzone.classList.toggle("box-tool", S.tool === "box");
    if (S.tool === "box") el.brushCursor.hidden = true;
  }
  function setSizeIndex(i, chosen) {
    S.sizeIndex = Math.min(SIZES.length - 1, Math.max(0, Math.round(Number(i) || 0)));
    el.brushSize.value = String(S.sizeIndex);
    const px = SIZES[S.sizeIndex];
    el.brushSizeValue.textContent = px + " px";
    el.brushSize.setAttribute("aria-valuetext", "radius " + px + " pixels of the image");
    if (chosen && S.item) S.sizeFor[S.iw + "x" + S.ih] = S.sizeIndex;
    updateCursorSize();
  }
  // A new picture size gets a brush of about a twentieth of its longer side, until the expert chooses one.
  function defaultSize() {
    const chosen = S.sizeFor[S.iw + "x" + S.ih];
    if (chosen !== undefined) return chosen;
    const want = Math.max(S.iw, S.ih) / 20;
    let best = 0;
    SIZES.forEach((s, i) => { if (Math.abs(s - want) < Math.abs(SIZES[best] - want)) best = i; });
    return best;
  }
  function setEdge(v) {
    S.edge = v === "hard" ? "hard" : "soft";
    el.brushEdge.value = S.edge;
    el.brushCursor.classList.toggle("hard", S.edge === "hard");
  }

  for (const input of [el.toolAttend, el.toolIgnore, el.toolIgnoreBox]) {
    input.addEventListener("change", () => { if (input.checked) setTool(input.value); });
  }
  el.brushSize.addEventListener("input", () => setSizeIndex(el.brushSize.value, true));
  el.brushEdge.addEventListener("change", () => setEdge(el.brushEdge.value));
  el.showMap.addEventListener("change", requestRender);
  el.opacity.addEventListener("input", () => { el.opacityValue.textContent = el.opacity.value; requestRender(); });
  el.preview.addEventListener("change", () => { if (el.preview.checked) el.showMap.checked = true; requestRender(); });
  el.undo.addEventListener("click", undo);
  el.redo.addEventListener("click", redo);
  el.reset.addEventListener("click", resetMap);
  el.clear.addEventListener("click", clearMap);
  el.confirmMap.addEventListener("click", confirmMap);

  // ------------------------------------------------------- window and level
  // For a greyscale picture: grey values in [level - window/2, level + window/2] spread from black to white.
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
  el.windowWidth.addEventListener("input", drawBase);
  el.windowLevel.addEventListener("input", drawBase);
  el.contrastAuto.addEventListener("click", autoContrast);
  el.contrastReset.addEventListener("click", () => setContrast(256, 128));

  // The picture at the working size; a greyscale one keeps its grey values for window and level.
  function setBase(img) {
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

  // --------------------------------------------------------------- controls
  function missing() {
    const need = [];
    if (!S.decidedAny && !S.confirmed) need.push("paint the map (or press “The map is right”)");
    if (S.label === null) need.push("choose the class");
    return need;
  }

  function updateControls() {
    const open = !!S.item;
    const need = open ? missing() : [];
    el.undo.disabled = !open || !S.undo.length;
    el.redo.disabled = !open || !S.redo.length;
    el.reset.disabled = !open;
    el.clear.disabled = !open;
    el.try.disabled = !open || S.busy.tryIt;
    el.submit.disabled = !open || S.busy.submit || need.length > 0;
    el.skip.disabled = !open || S.busy.skip || S.busy.submit;
    el.confirmMap.disabled = !open || S.decidedAny;
    el.confirmMap.setAttribute("aria-pressed", String(open && S.confirmed));
    el.confirmMap.classList.toggle("pressed", open && S.confirmed);
    el.confirmMap.title = S.decidedAny
      ? "You have painted: your painting is your decision (Reset goes back to the model’s map)"
      : "The model’s map is right as it is: send it as your decision for every pixel";
    el.usePredicted.disabled = !open;
    for (const input of el.classList.querySelectorAll("input")) input.disabled = !open;
    for (const b of [el.zoomIn, el.zoomOut, el.zoomFit]) b.disabled = !open;
    el.next.disabled = S.busy.open;
    el.upload.disabled = S.busy.open;
    el.try.textContent = S.busy.tryIt ? "Trying…" : "Try it";
    el.submit.textContent = S.busy.submit ? "Submitting…" : "Submit correction";
    el.submitNote.textContent = !open ? "" : need.length ? "To submit: " + need.join(" and ") + "." : "Ready: Ctrl+Enter or Submit.";
    el.submitNote.classList.toggle("ready", open && !need.length);
    el.dropzone.classList.toggle("is-busy", S.busy.open);
  }

  // ------------------------------------------------------------------ scores
  function renderScores(list, scores, note) {
    list.textContent = "";
    list.classList.remove("stale");
    (scores || []).forEach((s, idx) => {
      const li = document.createElement("li");
      if (idx === 0) li.className = "top";
      const p = clamp01(Number(s.probability) || 0);
      const name = document.createElement("span");
      name.className = "score-label";
      name.textContent = String(s.label);
      const bar = document.createElement("span");
      bar.className = "score-bar";
      const fill = document.createElement("span");
      fill.className = "score-fill";
      fill.style.width = (p * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      const pct = document.createElement("span");
      pct.className = "score-pct";
      pct.textContent = (p * 100).toFixed(1) + "%";
      li.append(name, " ", bar, pct);
      li.title = s.label + ": " + (p * 100).toFixed(1) + "%";
      list.appendChild(li);
    });
    if (note !== undefined) el.scoresNewNote.textContent = note;
  }

  // ------------------------------------------------------------------ class
  // The expert's own choice: nothing is chosen when an item opens. Number keys choose by position.
  function classesFor(modelName, scores, predicted) {
    const model = S.models.find((m) => m.name === modelName);
    const classes = model && model.classes.length ? model.classes.slice() : (scores || []).map((s) => String(s.label));
    if (predicted && !classes.includes(String(predicted))) classes.push(String(predicted));
    return classes;
  }

  function fillClasses(classes) {
    el.classList.textContent = "";
    classes.forEach((c, i) => {
      const label = document.createElement("label");
      label.className = "class-option";
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "label";
      input.value = c;
      input.id = "class-" + i;
      const key = i < 10 ? " (key " + i + ")" : "";
      input.title = "Class " + c + key;
      label.title = input.title;
      const name = document.createElement("span");
      name.textContent = c;
      label.append(input, name);
      if (i < 10 && c !== String(i)) {
        const kbd = document.createElement("kbd");
        kbd.textContent = String(i);
        label.append(kbd);
      }
      el.classList.appendChild(label);
    });
  }

  function chooseClass(value) {
    if (!S.item || value === undefined || value === null) return;
    const input = Array.from(el.classList.querySelectorAll("input")).find((i) => i.value === String(value));
    if (!input) return;
    input.checked = true;
    S.label = String(value);
    updateLabelNote();
    updateControls();
  }
  el.classList.addEventListener("change", (e) => { if (e.target.name === "label") chooseClass(e.target.value); });
  el.usePredicted.addEventListener("click", () => S.item && chooseClass(S.item.predicted_label));

  function updateLabelNote() {
    for (const l of el.classList.querySelectorAll(".class-option")) l.classList.toggle("chosen", l.querySelector("input").checked);
    if (!S.item) { el.labelNote.textContent = ""; el.labelNote.className = "small label-note"; return; }
    el.usePredicted.textContent = "Use predicted: " + S.item.predicted_label;
    const corrected = S.label !== null && S.label !== String(S.item.predicted_label);
    el.labelNote.className = "small label-note" + (corrected ? " corrected" : "");
    el.labelNote.textContent = S.label === null
      ? "Not chosen yet: click a class or press its number."
      : corrected ? "You chose " + S.label + "; the model said " + S.item.predicted_label + "."
        : "Same as the model’s prediction.";
  }

  // -------------------------------------------------------------- open item
  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.decoding = "async";
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("image"));
      img.src = src;
    });
  }

  function modelAttention(att) {
    const h = att && Number(att.height), w = att && Number(att.width), values = att && att.values;
    if (Number.isInteger(h) && Number.isInteger(w) && h > 0 && w > 0 && values && values.length === h * w) {
      return { h, w, values: Float32Array.from(values, (v) => clamp01(Number(v) || 0)) };
    }
    return null;
  }

  // Sets up the editor for an item: source ("queue" | "upload"), reviewId, imageB64, model_name, model_version,
  // prediction_id, predicted_label, scores, attention, lease_expires, confidence, priority, reason.
  function openItem(item, img, iw, ih) {
    let att = modelAttention(item.attention);
    if (!att) {
      showError("The model’s attention map for this item is missing or malformed; starting from an empty map.");
      att = { h: 8, w: 8, values: new Float32Array(64) };
    }
    S.iw = iw || img.naturalWidth; S.ih = ih || img.naturalHeight;
    const [W, H] = workingSize(S.iw, S.ih);
    S.item = item;
    S.W = W; S.H = H;
    S.mh = att.h; S.mw = att.w;
    S.modelUp = bilinear(att.values, att.w, att.h, W, H);
    S.map = S.modelUp.slice();
    S.decided = new Uint8Array(W * H);
    S.decidedAny = false;
    S.confirmed = false;
    S.label = null;
    S.undo = []; S.redo = [];
    S.maxUndo = Math.max(5, Math.min(50, Math.floor(UNDO_BYTES / (5 * W * H))));
    S.stroke = null; S.box = null;
    item.idempotencyKey = newKey();

    el.canvas.width = W; el.canvas.height = H;
    S.base.width = W; S.base.height = H;
    S.overlay.width = W; S.overlay.height = H;
    S.overlayData = new ImageData(W, H);
    setBase(img);

    el.empty.hidden = true;
    el.viewport.hidden = false;
    if (window.scrollY > 0) window.scrollTo(0, 0); // a narrow window stacks the lists below: back to the picture
    el.viewport.scrollLeft = 0; el.viewport.scrollTop = 0;
    fitPicture();
    setSizeIndex(defaultSize(), false);

    fillClasses(classesFor(item.model_name, item.scores, item.predicted_label));
    updateLabelNote();
    renderScores(el.scoresOld, item.scores);
    renderScores(el.scoresNew, [], "Paint, then press Try it to see the scores with your map.");

    const parts = [item.source === "upload" ? "Your image" : "Queue item", "predicted " + item.predicted_label];
    if (item.reason) parts.push(item.reason); // the priority's words, with the figures
    else if (typeof item.confidence === "number") parts.push((item.confidence * 100).toFixed(0) + "% sure");
    parts.push(S.iw + "×" + S.ih + " px");
    el.itemInfo.textContent = parts.join(" · ");
    el.itemInfo.classList.remove("muted");
    el.itemInfo.title = el.itemInfo.textContent + " · " + item.model_name + (item.model_version ? " version " + item.model_version : "");

    updateLease();
    markOpenInQueue();
    updateControls();
    requestRender();
  }

  function closeItem() {
    S.openSeq++;
    S.item = null;
    S.map = null; S.modelUp = null; S.decided = null; S.grey = null;
    S.decidedAny = false; S.confirmed = false; S.label = null;
    S.undo = []; S.redo = []; S.stroke = null; S.box = null;
    S.W = 0; S.H = 0; S.mh = 0; S.mw = 0; S.iw = 0; S.ih = 0;
    el.viewport.hidden = true;
    el.brushCursor.hidden = true;
    el.boxPreview.hidden = true;
    el.contrastPanel.hidden = true;
    el.empty.hidden = false;
    el.itemInfo.textContent = "No item open";
    el.itemInfo.title = "";
    el.itemInfo.classList.add("muted");
    el.classList.textContent = "";
    el.usePredicted.textContent = "Use predicted";
    updateLabelNote();
    el.scoresOld.textContent = "";
    el.scoresNew.textContent = "";
    el.scoresNewNote.textContent = "";
    el.zoomValue.textContent = "";
    el.zoomHint.hidden = true;
    updateLease();
    markOpenInQueue();
    updateControls();
  }

  // Painting not yet sent: leaving it (another item, a reload, signing out) asks first.
  const unsaved = () => !!S.item && (S.decidedAny || S.confirmed);
  function mayLeave(action) {
    if (!unsaved()) return Promise.resolve(true);
    return ask("You have painted on this item and not submitted it. " + action + " and lose your painting?", action, "Keep painting");
  }
  window.addEventListener("beforeunload", (e) => {
    if (unsaved() && !S.leaving) { e.preventDefault(); e.returnValue = ""; }
  });
  // A page that goes away gives its item back, without counting it as skipped.
  window.addEventListener("pagehide", () => { releaseQuietly(S.item, true); });

  // Give back a claim we leave without a correction: not a skip, so Open next may offer it again.
  function releaseQuietly(item, keepalive) {
    if (!item || item.source !== "queue" || !item.reviewId || item.released) return;
    item.released = true;
    api("POST", "/api/queue/" + encodeURIComponent(item.reviewId) + "/release", {}, keepalive).catch(() => {});
  }

  async function openClaimed(claimed, seq) {
    let img;
    try {
      img = await loadImage(claimed.image_url || "/api/queue/" + encodeURIComponent(claimed.id) + "/image");
    } catch (_) {
      throw new ApiError(0, "The image of this item could not be loaded. Try again, or skip the item.");
    }
    if (seq !== S.openSeq) return false;
    const previous = S.item;
    openItem({
      source: "queue",
      reviewId: claimed.id,
      imageB64: null,
      model_name: claimed.model_name,
      model_version: claimed.model_version,
      prediction_id: claimed.prediction_id,
      predicted_label: claimed.predicted_label,
      confidence: claimed.confidence,
      priority: claimed.priority,
      reason: claimed.reason,
      scores: claimed.scores,
      attention: claimed.attention,
      lease_expires: claimed.lease_expires,
    }, img, Number(claimed.image_width) || 0, Number(claimed.image_height) || 0);
    if (previous && previous.reviewId !== claimed.id) releaseQuietly(previous);
    return true;
  }

  async function claimAndOpen(request, confirmLeave, said) {
    if (S.busy.open || S.busy.submit) return;
    if (confirmLeave && !(await mayLeave("Open another item"))) return;
    S.busy.open = true;
    updateControls();
    const seq = ++S.openSeq;
    try {
      const claimed = await request();
      if (seq !== S.openSeq) return;
      if (S.item && S.item.source === "queue" && S.item.reviewId === claimed.id) {
        S.item.lease_expires = claimed.lease_expires; // already open here: keep the painting, take the new lease
        updateLease();
        setStatus("This item is already open.");
        return;
      }
      clearError();
      if (await openClaimed(claimed, seq)) {
        setStatus((said || "") + "Opened an item predicted as " + claimed.predicted_label + ".");
        refreshQueue(true);
      }
    } catch (err) {
      showError(err, err instanceof ApiError && err.status === 404 ? "info" : undefined);
      if (err instanceof ApiError && (err.status === 404 || err.status === 409)) refreshQueue(true);
    } finally {
      S.busy.open = false;
      updateControls();
    }
  }

  // Open next and the list use the same filters: the list shows what Open next gives, in its order.
  const filters = () => ({ model: el.filterModel.value, label: el.filterLabel.value });
  // after: what the page said before (a stored correction), kept in front of its news.
  function openNext(after) {
    return claimAndOpen(() => api("POST", "/api/queue/next", filters()), !after, after);
  }

  function claim(id) {
    if (S.item && S.item.source === "queue" && S.item.reviewId === id) return; // already open
    return claimAndOpen(() => api("POST", "/api/queue/" + encodeURIComponent(id) + "/claim", {}), true);
  }

  async function reclaim() {
    const item = S.item;
    if (!item || item.source !== "queue" || S.busy.reclaim) return;
    S.busy.reclaim = true;
    el.reclaim.disabled = true;
    try {
      const c = await api("POST", "/api/queue/" + encodeURIComponent(item.reviewId) + "/claim", {});
      if (S.item === item) {
        item.lease_expires = c.lease_expires;
        if (c.prediction_id) item.prediction_id = c.prediction_id;
        clearError();
        setStatus("Claimed again. Your painting is kept.");
        updateLease();
      }
    } catch (err) {
      showError(err);
    } finally {
      S.busy.reclaim = false;
      el.reclaim.disabled = false;
    }
  }

  // ------------------------------------------------------------------ lease
  function updateLease() {
    const item = S.item;
    el.lease.classList.remove("warn", "expired");
    el.reclaim.hidden = true;
    if (!item) { el.lease.textContent = ""; return; }
    if (item.source === "upload") { el.lease.textContent = "Your own image"; return; }
    const expires = Number(item.lease_expires);
    if (!Number.isFinite(expires) || expires <= 0) { el.lease.textContent = ""; return; }
    const left = Math.floor(expires - (Date.now() + S.clockSkewMs) / 1000);
    if (left <= 0) {
      el.lease.textContent = "Claim expired: claim again before submitting";
      el.lease.classList.add("expired");
      el.reclaim.hidden = false;
      return;
    }
    const m = Math.floor(left / 60), s = left % 60;
    el.lease.textContent = "Yours for " + m + ":" + String(s).padStart(2, "0");
    if (left < 60) el.lease.classList.add("warn");
  }
  el.reclaim.addEventListener("click", reclaim);
  setInterval(updateLease, 1000);

  // ------------------------------------------------------------ queue, progress
  let queueSeq = 0;
  async function refreshQueue(quiet) {
    const seq = ++queueSeq;
    const params = new URLSearchParams(filters());
    params.set("limit", String(QUEUE_LIMIT));
    el.refresh.disabled = true;
    try {
      const data = await api("GET", "/api/queue?" + params.toString());
      if (seq !== queueSeq) return;
      renderQueue((data && data.items) || []);
      S.left = data ? Number(data.left) : null;
      renderProgress();
    } catch (err) {
      if (!quiet) showError(err);
    } finally {
      if (seq === queueSeq) el.refresh.disabled = false;
    }
  }

  function midnight() {
    const d = new Date();
    d.setHours(0, 0, 0, 0);
    return d.getTime() / 1000;
  }
  async function refreshDone() {
    try {
      const data = await api("GET", "/api/corrections/mine?since=" + midnight());
      S.doneToday = ((data && data.items) || []).filter((i) => i.state !== "withdrawn").length;
      renderProgress();
    } catch (_) { /* the count waits for the next try */ }
  }
  function renderProgress() {
    const parts = [];
    if (S.left !== null) parts.push(S.left + " left" + (el.filterModel.value || el.filterLabel.value ? " with these filters" : ""));
    if (S.doneToday !== null) parts.push(S.doneToday + " done today");
    el.progress.textContent = parts.join(" · ");
  }

  function renderQueue(items) {
    el.queue.textContent = "";
    for (const it of items) {
      const li = document.createElement("li");
      li.className = "queue-item";
      li.dataset.id = it.id;
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "queue-open";
      btn.title = "Open this item (predicted " + it.predicted_label + ")";
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = "";
      img.loading = "lazy";
      img.width = 48; img.height = 48;
      img.src = it.image_url || "/api/queue/" + encodeURIComponent(it.id) + "/image";
      const body = document.createElement("span");
      body.className = "qi-body";
      const line1 = document.createElement("span");
      line1.className = "qi-line qi-label";
      line1.textContent = "Predicted " + it.predicted_label;
      if (it.claimed_by_me) {
        const mine = document.createElement("span");
        mine.className = "badge";
        mine.textContent = "yours";
        line1.append(" ", mine);
      }
      const reason = document.createElement("span");
      reason.className = "qi-reason";
      reason.textContent = it.reason || "";
      reason.title = it.reason || "";
      body.append(line1, reason);
      btn.append(img, body);
      li.appendChild(btn);
      el.queue.appendChild(li);
    }
    el.queueEmpty.hidden = items.length > 0;
    markOpenInQueue();
  }

  function markOpenInQueue() {
    const id = S.item && S.item.source === "queue" ? S.item.reviewId : null;
    for (const li of el.queue.querySelectorAll("li.queue-item")) {
      const open = li.dataset.id === id;
      li.classList.toggle("current", open);
      const btn = li.querySelector("button");
      if (open) btn.setAttribute("aria-current", "true");
      else btn.removeAttribute("aria-current");
    }
  }

  el.queue.addEventListener("click", (e) => {
    const li = e.target.closest("li.queue-item");
    if (li && el.queue.contains(li)) claim(li.dataset.id);
  });
  el.refresh.addEventListener("click", () => refreshQueue(false));
  el.next.addEventListener("click", () => openNext(false));
  el.filterModel.addEventListener("change", () => { fillFilterClasses(); refreshQueue(false); });
  el.filterLabel.addEventListener("change", () => refreshQueue(false));
  setInterval(() => { if (!document.hidden) refreshQueue(true); }, QUEUE_AUTO_REFRESH_MS);

  // ------------------------------------------------------------ my corrections
  function showTab(mine) {
    el.tabQueue.setAttribute("aria-selected", String(!mine));
    el.tabMine.setAttribute("aria-selected", String(mine));
    el.tabQueue.tabIndex = mine ? -1 : 0;
    el.tabMine.tabIndex = mine ? 0 : -1;
    el.queuePanel.hidden = mine;
    el.minePanel.hidden = !mine;
    if (mine) refreshMine();
  }
  el.tabQueue.addEventListener("click", () => showTab(false));
  el.tabMine.addEventListener("click", () => showTab(true));
  for (const tab of [el.tabQueue, el.tabMine]) {
    tab.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      e.preventDefault();
      const mine = tab === el.tabQueue;
      showTab(mine);
      (mine ? el.tabMine : el.tabQueue).focus();
    });
  }

  const STATE_WORDS = { pending: "waiting", consumed: "used", rejected: "rejected", withdrawn: "withdrawn" };
  function totalsWords(t) {
    const parts = [t.pending + " waiting", t.consumed + " used", t.rejected + " rejected", t.withdrawn + " withdrawn"];
    if (!t.total) return "";
    return t.total + (t.total === 1 ? " correction: " : " corrections: ") + parts.join(", ") + ". "
      + (t.confirmations ? t.confirmations + " of them confirmed the model’s map as right." : "");
  }

  async function refreshMine() {
    try {
      const data = await api("GET", "/api/corrections/mine");
      const items = (data && data.items) || [];
      renderMine(items, data && data.totals);
      S.doneToday = items.filter((i) => i.created >= midnight() && i.state !== "withdrawn").length;
      renderProgress();
    } catch (err) {
      showError(err);
    }
  }

  function renderMine(items, totals) {
    el.mineTotals.textContent = totals ? totalsWords(totals) : "";
    el.mineList.textContent = "";
    for (const c of items) {
      const li = document.createElement("li");
      li.className = "mine-item state-" + c.state + (c.held_back ? " held-back" : "");
      li.dataset.id = c.id;
      const head = document.createElement("div");
      head.className = "qi-line";
      const what = document.createElement("span");
      what.className = "qi-label";
      what.textContent = "Class " + (c.label || c.predicted_label)
        + (c.label && c.label !== c.predicted_label ? " (the model said " + c.predicted_label + ")" : "");
      const badge = document.createElement("span");
      badge.className = "state-badge";
      badge.textContent = c.held_back ? "held back" : STATE_WORDS[c.state] || c.state;
      head.append(what, badge);
      const when = document.createElement("div");
      when.className = "qi-meta";
      when.textContent = new Date(c.created * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" })
        + " · " + (c.confirmed ? "confirmed the model’s map" : "painted");
      const fate = document.createElement("div");
      fate.className = "fate";
      fate.textContent = c.fate;
      li.append(head, when, fate);
      if (c.state === "pending") {
        const w = document.createElement("button");
        w.type = "button";
        w.className = "btn btn-small withdraw";
        w.textContent = "Withdraw";
        w.title = "Take this correction back: no retraining run will use it";
        li.append(w);
      }
      el.mineList.appendChild(li);
    }
    el.mineEmpty.hidden = items.length > 0;
  }

  el.mineList.addEventListener("click", async (e) => {
    const btn = e.target.closest("button.withdraw");
    if (!btn) return;
    const id = btn.closest("li").dataset.id;
    if (!(await ask("Withdraw this correction? No retraining run will use it. This cannot be undone.", "Withdraw", "Keep it"))) return;
    btn.disabled = true;
    try {
      await api("POST", "/api/corrections/" + encodeURIComponent(id) + "/withdraw", {});
      setStatus("Correction withdrawn: no run will use it.");
    } catch (err) {
      showError(err);
    }
    refreshMine();
  });

  // ------------------------------------------------------------ try, submit, skip
  function attentionAtModelRes() {
    return { height: S.mh, width: S.mw, values: roundedList(areaDown(S.map, S.W, S.H, S.mw, S.mh)) };
  }

  async function tryIt() {
    const item = S.item;
    if (!item || S.busy.tryIt || S.stroke) return;
    S.busy.tryIt = true;
    updateControls();
    const body = item.source === "queue" ? { review_id: item.reviewId } : { image: item.imageB64 };
    body.attention = attentionAtModelRes();
    try {
      const r = await api("POST", "/api/predict", body);
      if (S.item !== item) return;
      const note = r && r.attention_supplied === false
        ? "This model did not use the supplied map; these are its own scores."
        : "The same model with your map in place of its own (nothing is stored).";
      renderScores(el.scoresNew, (r && r.scores) || [], note);
      const top = r && r.scores && r.scores[0];
      setStatus(top ? "With your map the model says " + top.label + " (" + (top.probability * 100).toFixed(1) + "%)." : "Prediction done.");
    } catch (err) {
      showError(err);
    } finally {
      S.busy.tryIt = false;
      updateControls();
    }
  }

  async function submit() {
    const item = S.item;
    if (!item || S.busy.submit || S.stroke) return;
    const need = missing();
    if (need.length) {
      showError("Nothing was stored. To submit, " + need.join(" and ") + ".", "info");
      return;
    }
    S.busy.submit = true;
    updateControls();
    const body = {
      label: S.label,
      predicted_label: item.predicted_label,
      prediction_id: item.prediction_id,
      model_name: item.model_name,
      model_version: item.model_version,
      idempotency_key: item.idempotencyKey,
    };
    if (item.source === "queue") body.review_id = item.reviewId;
    else body.image = item.imageB64;
    if (S.confirmed) {
      body.attention = { height: S.H, width: S.W, values: roundedList(S.modelUp) };
      body.confirmed = true;
    } else {
      body.attention = { height: S.H, width: S.W, values: roundedList(S.map) };
      body.decided = base64Bytes(S.decided);
    }
    let stored = false;
    try {
      await api("POST", "/api/corrections", body);
      stored = true;
      if (S.item === item) closeItem();
      clearError();
      setStatus("Correction stored" + (body.confirmed ? " (the model’s map, confirmed). " : ". "));
      refreshDone();
    } catch (err) {
      showError(err);
      if (err instanceof ApiError && err.status === 409 && item.source === "queue" && S.item === item) {
        // The claim is gone: say so, and offer to claim the item again without losing the painting.
        item.lease_expires = Math.min(Number(item.lease_expires) || 0, (Date.now() + S.clockSkewMs) / 1000 - 1);
        updateLease();
      }
    } finally {
      S.busy.submit = false;
      updateControls();
    }
    if (stored && el.autoNext.checked && item.source === "queue") await openNext(el.status.textContent);
    else if (stored) refreshQueue(true);
  }

  async function skip() {
    const item = S.item;
    if (!item || S.busy.skip || S.busy.submit) return;
    if (!(await mayLeave("Skip it"))) return;
    if (item.source === "upload") {
      closeItem();
      setStatus("Closed your image without storing a correction.");
      return;
    }
    S.busy.skip = true;
    updateControls();
    try {
      await api("POST", "/api/queue/" + encodeURIComponent(item.reviewId) + "/skip", {});
      if (S.item === item) closeItem();
      clearError();
      setStatus("Item skipped: it goes to the other experts.");
    } catch (err) {
      showError(err);
      // A claim that is already gone cannot be given back: close the item anyway.
      if (err instanceof ApiError && (err.status === 404 || err.status === 409) && S.item === item) closeItem();
    } finally {
      S.busy.skip = false;
      updateControls();
      refreshQueue(true);
    }
  }

  el.try.addEventListener("click", tryIt);
  el.submit.addEventListener("click", submit);
  el.skip.addEventListener("click", skip);
  el.autoNext.checked = localStorage.getItem("abn-editor-auto-next") !== "0";
  el.autoNext.addEventListener("change", () => localStorage.setItem("abn-editor-auto-next", el.autoNext.checked ? "1" : "0"));

  // ------------------------------------------------------------ own image
  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.onload = () => {
        const s = String(fr.result || "");
        resolve(s.slice(s.indexOf(",") + 1));
      };
      fr.onerror = () => reject(new ApiError(0, "The file could not be read."));
      fr.readAsDataURL(file);
    });
  }

  async function openUpload(file) {
    if (!file || S.busy.open || S.busy.submit) return;
    if (!(await mayLeave("Open your image"))) return;
    S.busy.open = true;
    updateControls();
    const seq = ++S.openSeq;
    setStatus("Predicting " + (file.name || "your image") + "…");
    let url = null;
    try {
      const b64 = await readBase64(file);
      const pred = await api("POST", "/api/predict", { image: b64 });
      if (seq !== S.openSeq) return;
      url = URL.createObjectURL(file);
      let img;
      try {
        img = await loadImage(url);
      } catch (_) {
        throw new ApiError(0, "The service read this image, but this browser cannot display it. Try a PNG or JPEG file.");
      }
      if (seq !== S.openSeq) return;
      const scores = (pred && pred.scores) || [];
      const top = scores[0];
      const previous = S.item;
      clearError();
      openItem({
        source: "upload",
        reviewId: null,
        imageB64: b64,
        model_name: pred.model_name,
        model_version: pred.model_version,
        prediction_id: pred.prediction_id,
        predicted_label: top ? String(top.label) : "",
        confidence: top ? Number(top.probability) : undefined,
        scores,
        attention: pred.attention,
      }, img, img.naturalWidth, img.naturalHeight);
      releaseQuietly(previous);
      setStatus("Your image: the model says " + (top ? top.label : "?") + ".");
      if (pred.warnings && pred.warnings.length) showError(pred.warnings.join(" "), "info");
    } catch (err) {
      setStatus("");
      showError(err);
    } finally {
      if (url) URL.revokeObjectURL(url);
      S.busy.open = false;
      updateControls();
    }
  }

  el.upload.addEventListener("change", () => {
    const f = el.upload.files && el.upload.files[0];
    el.upload.value = "";
    if (f) openUpload(f);
  });

  const hasFiles = (e) => !!e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  let dragDepth = 0;
  el.dropzone.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    el.dropzone.classList.add("dragging");
    el.dropHint.hidden = false;
  });
  el.dropzone.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  el.dropzone.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) { el.dropzone.classList.remove("dragging"); el.dropHint.hidden = true; }
  });
  el.dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    el.dropHint.hidden = true;
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) openUpload(f);
  });
  // A file dropped anywhere else must not make the browser leave the page.
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => { if (hasFiles(e)) e.preventDefault(); });

  // --------------------------------------------------------------- keyboard
  // Shortcuts work wherever the focus is (a list, a slider, a button), except in a text box.
  const TEXT_INPUTS = new Set(["text", "password", "search", "email", "url", "tel", "number"]);
  function isTyping(t) {
    if (!t || t === document.body) return false;
    if (t.isContentEditable || t.tagName === "TEXTAREA") return true;
    return t.tagName === "INPUT" && TEXT_INPUTS.has((t.type || "text").toLowerCase());
  }
  const onControl = (t) => !!t && t !== document.body && !!t.closest("button, input, select, summary, a, [role=tab]");

  document.addEventListener("keydown", (e) => {
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
    const actions = {
      n: () => openNext(false),
      a: () => setTool("attend"),
      i: () => setTool("ignore"),
      r: () => setTool("box"),
      e: () => setEdge(S.edge === "soft" ? "hard" : "soft"),
      m: () => { el.showMap.checked = !el.showMap.checked; requestRender(); },
      p: () => { el.preview.checked = !el.preview.checked; if (el.preview.checked) el.showMap.checked = true; requestRender(); },
      t: tryIt,
      s: skip,
      f: fitPicture,
      "+": () => zoomBy(ZOOM_STEP),
      "=": () => zoomBy(ZOOM_STEP),
      "-": () => zoomBy(1 / ZOOM_STEP),
    };
    if (actions[key]) { e.preventDefault(); actions[key](); }
  });
  document.addEventListener("keyup", (e) => {
    if (e.key === " " && S.spaceDown) {
      e.preventDefault(); // a focused button is not pressed by the Space that moved the picture
      S.spaceDown = false;
      el.dropzone.classList.remove("can-pan");
    }
  });
  window.addEventListener("blur", () => { S.spaceDown = false; el.dropzone.classList.remove("can-pan"); });

  el.errorDismiss.addEventListener("click", clearError);
  // The shortcuts help closes on a click elsewhere.
  document.addEventListener("click", (e) => {
    if (el.shortcuts.open && !el.shortcuts.contains(e.target)) el.shortcuts.open = false;
  });
  // The skip link takes the keyboard to the tools.
  $("skip-to-tools").addEventListener("click", (e) => { e.preventDefault(); $("tools").focus(); });

  // ---------------------------------------------------------------- session
  el.signout.addEventListener("click", async () => {
    if (!(await mayLeave("Sign out"))) return;
    el.signout.disabled = true;
    releaseQuietly(S.item);
    S.leaving = true;
    try { await api("DELETE", "/api/session"); } catch (_) { /* going to the sign-in page anyway */ }
    location.assign("/");
  });

  function fillFilterClasses() {
    const chosen = el.filterModel.value, before = el.filterLabel.value, seen = new Set();
    el.filterLabel.length = 1; // keeps "Any class"
    for (const m of S.models) {
      if (chosen && m.name !== chosen) continue;
      for (const c of m.classes) {
        if (seen.has(c)) continue;
        seen.add(c);
        el.filterLabel.add(new Option(c, c));
      }
    }
    el.filterLabel.value = seen.has(before) ? before : "";
  }

  async function loadMe() {
    try {
      const me = await api("GET", "/api/me");
      el.expertName.textContent = (me && me.expert) || "expert";
    } catch (err) {
      el.expertName.textContent = "expert";
      showError(err);
    }
  }

  async function loadModels() {
    try {
      const data = await api("GET", "/api/models");
      S.models = ((data && data.models) || []).map((m) => ({ name: String(m.name), classes: (m.classes || []).map(String) }));
      for (const m of S.models) el.filterModel.add(new Option(m.name, m.name));
      fillFilterClasses();
    } catch (err) {
      showError(err);
    }
  }

  // ---------------------------------------------------------- test hooks
  // For tests and scripts that drive the page: its state, and where an image pixel is on the screen.
  window.editorState = () => ({
    itemId: S.item && S.item.source === "queue" ? S.item.reviewId : null,
    source: S.item ? S.item.source : null,
    imageWidth: S.iw, imageHeight: S.ih,
    width: S.W, height: S.H,
    modelHeight: S.mh, modelWidth: S.mw,
    undoDepth: S.undo.length, redoDepth: S.redo.length,
    tool: S.tool, size: SIZES[S.sizeIndex], edge: S.edge,
    zoom: S.item ? (S.zoom * S.W) / S.iw : 0,
    label: S.label, confirmed: S.confirmed,
    decided: S.decided ? S.decided.reduce((a, b) => a + b, 0) : 0,
    unsaved: unsaved(),
    grey: !!S.grey,
    busy: Object.values(S.busy).some(Boolean),
  });
  window.editorMapAt = (x, y) => {
    if (!S.map) return null;
    x = Math.floor(x); y = Math.floor(y);
    return x < 0 || y < 0 || x >= S.W || y >= S.H ? null : S.map[y * S.W + x];
  };
  window.editorDecidedAt = (x, y) => {
    if (!S.decided) return null;
    x = Math.floor(x); y = Math.floor(y);
    return x < 0 || y < 0 || x >= S.W || y >= S.H ? null : S.decided[y * S.W + x];
  };
  // The client (viewport) point at the centre of image pixel (x, y); x, y may be fractional or outside.
  window.editorClientPoint = (x, y) => {
    if (!S.item) return null;
    const r = el.canvas.getBoundingClientRect();
    return { x: r.left + ((x + 0.5) * r.width) / S.iw, y: r.top + ((y + 0.5) * r.height) / S.ih };
  };
  window.editorBaseAt = (x, y) => (S.base.getContext("2d").getImageData(Math.floor(x), Math.floor(y), 1, 1).data[0]);

  // ------------------------------------------------------------------ start
  if (typeof ResizeObserver === "function") new ResizeObserver(onResize).observe(el.viewport);
  setTool("attend");
  setSizeIndex(el.brushSize.value, false);
  setEdge(el.brushEdge.value);
  el.opacityValue.textContent = el.opacity.value;
  closeItem();
  loadMe();
  loadModels().then(() => refreshQueue(false));
  refreshDone();
})();
