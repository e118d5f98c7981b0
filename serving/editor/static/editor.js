"use strict";
// Attention editor: the page a domain expert uses to correct an Attention Branch
// Network's attention map by painting. Plain ES2020, no dependencies.
(() => {
  const $ = (id) => document.getElementById(id);

  const WORK_LONG_SIDE = 256; // the working map's longest side, in map pixels
  const DISPLAY_SCALE = 2; // CSS pixels per working-map pixel when there is room
  const MAX_UNDO = 50;
  const QUEUE_LIMIT = 50;
  const QUEUE_AUTO_REFRESH_MS = 30000;

  // ---------------------------------------------------------------- elements
  const el = {
    expertName: $("expert-name"),
    signout: $("signout"),
    filterModel: $("filter-model"),
    filterLabel: $("filter-label"),
    classList: $("class-list"),
    refresh: $("refresh"),
    next: $("next"),
    queue: $("queue"),
    queueEmpty: $("queue-empty"),
    upload: $("upload"),
    error: $("error"),
    errorMessage: $("error-message"),
    errorDismiss: $("error-dismiss"),
    status: $("status"),
    itemInfo: $("item-info"),
    lease: $("lease"),
    reclaim: $("reclaim"),
    dropzone: $("dropzone"),
    empty: $("empty"),
    canvasWrap: $("canvas-wrap"),
    canvas: $("canvas"),
    cursor: $("brush-cursor"),
    dropHint: $("drop-hint"),
    tryBtn: $("try"),
    skip: $("skip"),
    submit: $("submit"),
    brushAttend: $("brush-attend"),
    brushIgnore: $("brush-ignore"),
    brushSize: $("brush-size"),
    brushSizeValue: $("brush-size-value"),
    brushEdge: $("brush-edge"),
    showMap: $("show-map"),
    opacity: $("opacity"),
    opacityValue: $("opacity-value"),
    preview: $("preview"),
    undo: $("undo"),
    redo: $("redo"),
    reset: $("reset"),
    clear: $("clear"),
    label: $("label"),
    labelNote: $("label-note"),
    scoresOld: $("scores-old"),
    scoresNew: $("scores-new"),
    scoresNewNote: $("scores-new-note"),
  };
  const ctx = el.canvas.getContext("2d");

  // ------------------------------------------------------------------- state
  const S = {
    models: [], // [{name, classes}]
    item: null, // the open item (see openItem)
    W: 0, H: 0, // working map size
    mh: 0, mw: 0, // model map size
    modelMap: null, // Float32Array mh*mw
    modelUp: null, // Float32Array W*H: the model's map, bilinear-upsampled
    map: null, // Float32Array W*H: the working map
    undo: [], redo: [],
    stroke: null,
    brush: "attend", size: 12, edge: "soft",
    busy: { open: false, submit: false, tryIt: false, skip: false, reclaim: false },
    openSeq: 0,
    clockSkewMs: 0, // server clock minus this clock, from the Date header
    base: document.createElement("canvas"), // the image at the working size
    overlay: document.createElement("canvas"), // the coloured map at the working size
    overlayData: null,
    renderQueued: false,
    tryStale: false,
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
    if (status === 422) return "The service could not read this request.";
    if (status === 429) return "Too many requests. Wait a moment and try again.";
    if (status === 502 || status === 503 || status === 504) return "The service is unavailable right now. Try again in a moment.";
    if (status >= 500) return "The service had an internal problem. Try again in a moment.";
    return "The request failed (HTTP " + status + ").";
  }

  function detailOf(data, status) {
    if (data && typeof data.detail === "string" && data.detail.trim()) return data.detail;
    if (data && Array.isArray(data.detail)) {
      const parts = data.detail.map((d) => (d && typeof d.msg === "string" ? d.msg : "")).filter(Boolean);
      if (parts.length) return parts.join("; ");
    }
    return statusWords(status);
  }

  function noteServerClock(res) {
    const date = res.headers.get("Date");
    if (!date) return;
    const server = Date.parse(date);
    if (Number.isNaN(server)) return;
    const skew = server - Date.now();
    // The header has one-second resolution: only correct a clock that is clearly off.
    S.clockSkewMs = Math.abs(skew) > 3000 ? skew : 0;
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
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

  // -------------------------------------------------------------- map maths
  const clamp01 = (v) => (v < 0 ? 0 : v > 1 ? 1 : v);

  function workingSize(iw, ih) {
    iw = Math.max(1, iw || 1); ih = Math.max(1, ih || 1);
    if (iw >= ih) return [WORK_LONG_SIDE, Math.max(1, Math.round((WORK_LONG_SIDE * ih) / iw))];
    return [Math.max(1, Math.round((WORK_LONG_SIDE * iw) / ih)), WORK_LONG_SIDE];
  }

  // Bilinear upsampling (pixel centres aligned, edges clamped).
  function bilinear(src, sw, sh, dw, dh) {
    const out = new Float32Array(dw * dh);
    for (let y = 0; y < dh; y++) {
      let sy = ((y + 0.5) * sh) / dh - 0.5;
      sy = Math.min(Math.max(sy, 0), sh - 1);
      const y0 = Math.floor(sy), y1 = Math.min(y0 + 1, sh - 1), fy = sy - y0;
      for (let x = 0; x < dw; x++) {
        let sx = ((x + 0.5) * sw) / dw - 0.5;
        sx = Math.min(Math.max(sx, 0), sw - 1);
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
    const scale = n / m;
    const rows = [];
    for (let o = 0; o < m; o++) {
      const a = o * scale, b = (o + 1) * scale;
      const row = [];
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
      for (let x = 0; x < dw; x++) {
        out[y * dw + x] = src[sy * sw + Math.min(sw - 1, Math.floor((x * sw) / dw))];
      }
    }
    return out;
  }

  const round3 = (v) => Math.round(v * 1000) / 1000;
  const roundedList = (arr) => Array.from(arr, round3);

  // Jet-like colour map: blue (0) → cyan → yellow → red (1).
  const JET = (() => {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const v = i / 255;
      const r = clamp01(Math.min(4 * v - 1.5, -4 * v + 4.5));
      const g = clamp01(Math.min(4 * v - 0.5, -4 * v + 3.5));
      const b = clamp01(Math.min(4 * v + 0.5, -4 * v + 2.5));
      lut[i * 3] = r * 255; lut[i * 3 + 1] = g * 255; lut[i * 3 + 2] = b * 255;
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
    const d = S.overlayData.data;
    for (let i = 0, n = W * H; i < n; i++) {
      const c = Math.round(clamp01(src[i]) * 255) * 3;
      const j = i * 4;
      d[j] = JET[c]; d[j + 1] = JET[c + 1]; d[j + 2] = JET[c + 2]; d[j + 3] = 255;
    }
    S.overlay.getContext("2d").putImageData(S.overlayData, 0, 0);
    ctx.globalAlpha = Number(el.opacity.value) / 100;
    ctx.drawImage(S.overlay, 0, 0);
    ctx.globalAlpha = 1;
  }

  // Fit the canvas in the picture area: 2 CSS px per map pixel when there is room.
  function fitCanvas() {
    if (!S.item) return;
    const cs = getComputedStyle(el.dropzone);
    const availW = el.dropzone.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    const availH = el.dropzone.clientHeight - parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom);
    let scale = DISPLAY_SCALE;
    if (availW > 0) scale = Math.min(scale, availW / S.W);
    if (availH > 0) scale = Math.min(scale, availH / S.H);
    scale = Math.max(scale, 0.5);
    el.canvas.style.width = Math.floor(S.W * scale) + "px";
    el.canvas.style.height = Math.floor(S.H * scale) + "px";
  }

  // --------------------------------------------------------------- painting
  function toMap(clientX, clientY) {
    const r = el.canvas.getBoundingClientRect();
    return {
      x: ((clientX - r.left) * S.W) / r.width,
      y: ((clientY - r.top) * S.H) / r.height,
    };
  }

  function strengthAt(d, r, hard) {
    if (hard) return d <= r ? 1 : 0;
    if (d >= r) return 0;
    // Soft: 1 over the pixel under the pointer, falling smoothly (cosine) to 0 at the radius.
    const t = Math.max(0, d - 0.5) / Math.max(r - 0.5, 0.5);
    return t >= 1 ? 0 : 0.5 * (1 + Math.cos(Math.PI * t));
  }

  function dab(cx, cy) {
    const st = S.stroke, W = S.W, H = S.H, r = st.radius;
    const x0 = Math.max(0, Math.floor(cx - r - 1)), x1 = Math.min(W - 1, Math.ceil(cx + r + 1));
    const y0 = Math.max(0, Math.floor(cy - r - 1)), y1 = Math.min(H - 1, Math.ceil(cy + r + 1));
    const before = st.before, strength = st.strength, map = S.map, target = st.target;
    for (let y = y0; y <= y1; y++) {
      const dy = y + 0.5 - cy;
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx;
        const s = strengthAt(Math.sqrt(dx * dx + dy * dy), r, st.hard);
        const i = y * W + x;
        if (s > strength[i]) {
          strength[i] = s;
          const v = before[i] + (target - before[i]) * s;
          if (v !== map[i]) { map[i] = v; st.changed = true; }
        }
      }
    }
  }

  function strokeTo(x, y) {
    const st = S.stroke;
    const dx = x - st.lastX, dy = y - st.lastY;
    const dist = Math.sqrt(dx * dx + dy * dy);
    const spacing = Math.max(0.25, st.radius / 4); // ≤ radius/3
    const steps = Math.max(1, Math.ceil(dist / spacing));
    for (let k = 1; k <= steps; k++) dab(st.lastX + (dx * k) / steps, st.lastY + (dy * k) / steps);
    st.lastX = x; st.lastY = y;
  }

  function beginStroke(x, y, pointerId) {
    S.stroke = {
      pointerId,
      before: S.map.slice(),
      strength: new Float32Array(S.W * S.H),
      target: S.brush === "attend" ? 1 : 0,
      radius: S.size,
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
    if (st.changed) {
      pushUndo(st.before);
      mapChanged();
    }
  }

  function pushUndo(snapshot) {
    S.undo.push(snapshot);
    if (S.undo.length > MAX_UNDO) S.undo.shift();
    S.redo = [];
  }

  function mapChanged() {
    if (el.scoresNew.childElementCount) {
      S.tryStale = true;
      el.scoresNew.classList.add("stale");
      el.scoresNewNote.textContent = "The map has changed since. Try it again to update.";
    }
    updateControls();
    requestRender();
  }

  function undo() {
    if (!S.item || S.stroke || !S.undo.length) return;
    S.redo.push(S.map);
    S.map = S.undo.pop();
    mapChanged();
  }
  function redo() {
    if (!S.item || S.stroke || !S.redo.length) return;
    S.undo.push(S.map);
    if (S.undo.length > MAX_UNDO) S.undo.shift();
    S.map = S.redo.pop();
    mapChanged();
  }
  function resetMap() {
    if (!S.item || S.stroke) return;
    pushUndo(S.map);
    S.map = S.modelUp.slice();
    mapChanged();
    setStatus("Map reset to the model’s map");
  }
  function clearMap() {
    if (!S.item || S.stroke) return;
    pushUndo(S.map);
    S.map = new Float32Array(S.W * S.H);
    mapChanged();
    setStatus("Map cleared");
  }

  function updateCursor(clientX, clientY) {
    if (!S.item) { el.cursor.hidden = true; return; }
    const r = el.canvas.getBoundingClientRect();
    const wr = el.canvasWrap.getBoundingClientRect();
    const d = (2 * S.size * r.width) / S.W;
    el.cursor.style.width = d + "px";
    el.cursor.style.height = d + "px";
    el.cursor.style.left = clientX - wr.left + "px";
    el.cursor.style.top = clientY - wr.top + "px";
    el.cursor.classList.toggle("ignore", S.brush === "ignore");
    el.cursor.hidden = false;
  }

  el.canvas.addEventListener("pointerdown", (e) => {
    if (!S.item || S.stroke) return;
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    try { el.canvas.setPointerCapture(e.pointerId); } catch (_) { /* ignore */ }
    const p = toMap(e.clientX, e.clientY);
    beginStroke(p.x, p.y, e.pointerId);
    updateCursor(e.clientX, e.clientY);
  });
  el.canvas.addEventListener("pointermove", (e) => {
    if (e.pointerType !== "touch") updateCursor(e.clientX, e.clientY);
    if (!S.stroke || e.pointerId !== S.stroke.pointerId) return;
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const p = toMap(ev.clientX, ev.clientY);
      strokeTo(p.x, p.y);
    }
    requestRender();
  });
  const finishPointer = (e) => {
    if (!S.stroke || e.pointerId !== S.stroke.pointerId) return;
    if (e.type === "pointerup") {
      const p = toMap(e.clientX, e.clientY);
      strokeTo(p.x, p.y);
    }
    endStroke();
    requestRender();
  };
  el.canvas.addEventListener("pointerup", finishPointer);
  el.canvas.addEventListener("pointercancel", finishPointer);
  el.canvas.addEventListener("lostpointercapture", finishPointer);
  el.canvas.addEventListener("pointerleave", () => { if (!S.stroke) el.cursor.hidden = true; });
  el.canvas.addEventListener("contextmenu", (e) => e.preventDefault());

  // ------------------------------------------------------------ brush tools
  function setBrush(b) {
    S.brush = b === "ignore" ? "ignore" : "attend";
    el.brushAttend.checked = S.brush === "attend";
    el.brushIgnore.checked = S.brush === "ignore";
    el.cursor.classList.toggle("ignore", S.brush === "ignore");
  }
  function setSize(n) {
    S.size = Math.min(50, Math.max(1, Math.round(Number(n) || 1)));
    el.brushSize.value = String(S.size);
    el.brushSizeValue.textContent = String(S.size);
    if (!el.cursor.hidden) {
      const r = el.canvas.getBoundingClientRect();
      const d = (2 * S.size * r.width) / (S.W || 1);
      el.cursor.style.width = d + "px";
      el.cursor.style.height = d + "px";
    }
  }
  function setEdge(v) {
    S.edge = v === "hard" ? "hard" : "soft";
    el.brushEdge.value = S.edge;
    el.cursor.classList.toggle("hard", S.edge === "hard");
  }

  el.brushAttend.addEventListener("change", () => { if (el.brushAttend.checked) setBrush("attend"); });
  el.brushIgnore.addEventListener("change", () => { if (el.brushIgnore.checked) setBrush("ignore"); });
  el.brushSize.addEventListener("input", () => setSize(el.brushSize.value));
  el.brushEdge.addEventListener("change", () => setEdge(el.brushEdge.value));
  el.showMap.addEventListener("change", requestRender);
  el.opacity.addEventListener("input", () => {
    el.opacityValue.textContent = el.opacity.value;
    requestRender();
  });
  el.preview.addEventListener("change", () => {
    if (el.preview.checked) el.showMap.checked = true;
    requestRender();
  });
  el.undo.addEventListener("click", undo);
  el.redo.addEventListener("click", redo);
  el.reset.addEventListener("click", resetMap);
  el.clear.addEventListener("click", clearMap);

  // --------------------------------------------------------------- controls
  function updateControls() {
    const open = !!S.item;
    const busyOpen = S.busy.open;
    el.undo.disabled = !open || !S.undo.length;
    el.redo.disabled = !open || !S.redo.length;
    el.reset.disabled = !open;
    el.clear.disabled = !open;
    el.tryBtn.disabled = !open || S.busy.tryIt;
    el.submit.disabled = !open || S.busy.submit;
    el.skip.disabled = !open || S.busy.skip || S.busy.submit;
    el.label.disabled = !open;
    el.next.disabled = busyOpen;
    el.upload.disabled = busyOpen;
    el.tryBtn.textContent = S.busy.tryIt ? "Trying…" : "Try it";
    el.submit.textContent = S.busy.submit ? "Submitting…" : "Submit correction";
    el.dropzone.classList.toggle("is-busy", busyOpen);
  }

  // ------------------------------------------------------------------ scores
  function renderScores(list, scores, note) {
    list.textContent = "";
    list.classList.remove("stale");
    (scores || []).forEach((s, idx) => {
      const li = document.createElement("li");
      if (idx === 0) li.className = "top";
      const p = Math.max(0, Math.min(1, Number(s.probability) || 0));
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
  function classesFor(modelName, scores, predicted) {
    const model = S.models.find((m) => m.name === modelName);
    const classes = model && Array.isArray(model.classes) && model.classes.length
      ? model.classes.map(String)
      : (scores || []).map((s) => String(s.label));
    if (predicted !== undefined && predicted !== null && !classes.includes(String(predicted))) classes.push(String(predicted));
    return classes;
  }

  function fillLabelSelect(classes, predicted) {
    el.label.textContent = "";
    for (const c of classes) {
      const opt = document.createElement("option");
      opt.value = c;
      opt.textContent = c === String(predicted) ? c + " (predicted)" : c;
      el.label.appendChild(opt);
    }
    el.label.value = String(predicted);
    updateLabelNote();
  }

  function updateLabelNote() {
    if (!S.item) { el.labelNote.textContent = ""; el.label.classList.remove("corrected"); return; }
    const corrected = el.label.value !== String(S.item.predicted_label);
    el.label.classList.toggle("corrected", corrected);
    el.labelNote.textContent = corrected
      ? "Class corrected (the model said " + S.item.predicted_label + ")."
      : "Same as the model’s prediction.";
  }
  el.label.addEventListener("change", updateLabelNote);

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
    const h = att && Number(att.height), w = att && Number(att.width);
    const values = att && att.values;
    if (Number.isInteger(h) && Number.isInteger(w) && h > 0 && w > 0 && values && values.length === h * w) {
      return { h, w, values: Float32Array.from(values, (v) => clamp01(Number(v) || 0)) };
    }
    return null;
  }

  // Sets up the editor for an item. `item` carries: source ("queue" | "upload"), reviewId,
  // imageB64, model_name, model_version, prediction_id, predicted_label, scores, attention,
  // lease_expires, confidence, priority, reason.
  function openItem(item, img, iw, ih) {
    let att = modelAttention(item.attention);
    if (!att) {
      showError("The model’s attention map for this item is missing or malformed; starting from an empty map.");
      att = { h: 8, w: 8, values: new Float32Array(64) };
    }
    const [W, H] = workingSize(iw || img.naturalWidth, ih || img.naturalHeight);
    S.item = item;
    S.W = W; S.H = H;
    S.mh = att.h; S.mw = att.w;
    S.modelMap = att.values;
    S.modelUp = bilinear(att.values, att.w, att.h, W, H);
    S.map = S.modelUp.slice();
    S.undo = []; S.redo = [];
    S.stroke = null;
    S.tryStale = false;
    item.idempotencyKey = newKey();

    el.canvas.width = W; el.canvas.height = H;
    S.base.width = W; S.base.height = H;
    S.overlay.width = W; S.overlay.height = H;
    S.overlayData = new ImageData(W, H);
    const bctx = S.base.getContext("2d");
    bctx.imageSmoothingEnabled = true;
    bctx.imageSmoothingQuality = "high";
    bctx.fillStyle = "#000";
    bctx.fillRect(0, 0, W, H);
    bctx.drawImage(img, 0, 0, W, H);

    el.empty.hidden = true;
    el.canvasWrap.hidden = false;
    fitCanvas();

    const predicted = item.predicted_label;
    fillLabelSelect(classesFor(item.model_name, item.scores, predicted), predicted);
    renderScores(el.scoresOld, item.scores);
    renderScores(el.scoresNew, [], "");
    el.scoresNewNote.textContent = "Paint, then press Try it to see the scores with your map.";

    const parts = [];
    parts.push(item.source === "upload" ? "Your image" : "Queue item");
    parts.push("predicted " + predicted);
    if (typeof item.confidence === "number") parts.push((item.confidence * 100).toFixed(1) + "% sure");
    if (typeof item.priority === "number") parts.push("priority " + item.priority.toFixed(2));
    if (item.reason) parts.push(item.reason);
    parts.push(item.model_name + (item.model_version ? " v" + item.model_version : ""));
    el.itemInfo.textContent = parts.join(" · ");
    el.itemInfo.classList.remove("muted");
    el.itemInfo.title = el.itemInfo.textContent;

    updateLease();
    markOpenInQueue();
    updateControls();
    requestRender();
  }

  function closeItem() {
    S.openSeq++;
    S.item = null;
    S.map = null; S.modelUp = null; S.modelMap = null;
    S.undo = []; S.redo = []; S.stroke = null;
    S.W = 0; S.H = 0; S.mh = 0; S.mw = 0;
    el.canvasWrap.hidden = true;
    el.cursor.hidden = true;
    el.empty.hidden = false;
    el.itemInfo.textContent = "No item open";
    el.itemInfo.title = "";
    el.itemInfo.classList.add("muted");
    el.label.textContent = "";
    updateLabelNote();
    el.scoresOld.textContent = "";
    el.scoresNew.textContent = "";
    el.scoresNewNote.textContent = "";
    updateLease();
    markOpenInQueue();
    updateControls();
  }

  // Give back a claim we are leaving without a correction, so other experts can take it.
  function releaseQuietly(item) {
    if (!item || item.source !== "queue" || !item.reviewId) return;
    api("POST", "/api/queue/" + encodeURIComponent(item.reviewId) + "/skip", {}).catch(() => {});
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

  async function claimAndOpen(request) {
    if (S.busy.open || S.busy.submit) return;
    S.busy.open = true;
    updateControls();
    const seq = ++S.openSeq;
    try {
      const claimed = await request();
      if (seq !== S.openSeq) return;
      if (S.item && S.item.source === "queue" && S.item.reviewId === claimed.id) {
        // Already open here: keep the painting, just take the new lease.
        S.item.lease_expires = claimed.lease_expires;
        updateLease();
        setStatus("This item is already open.");
        return;
      }
      clearError();
      if (await openClaimed(claimed, seq)) {
        setStatus("Opened an item predicted as " + claimed.predicted_label + ".");
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) showError(err, "info");
      else showError(err);
      if (err instanceof ApiError && (err.status === 404 || err.status === 409)) refreshQueue(true);
    } finally {
      S.busy.open = false;
      updateControls();
    }
  }

  function openNext() {
    return claimAndOpen(() => api("POST", "/api/queue/next", {
      model: el.filterModel.value,
      label: el.filterLabel.value.trim(),
    }));
  }

  function claim(id) {
    if (S.item && S.item.source === "queue" && S.item.reviewId === id) return; // already open
    return claimAndOpen(() => api("POST", "/api/queue/" + encodeURIComponent(id) + "/claim", {}));
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
    if (!item) { el.lease.textContent = ""; el.reclaim.hidden = true; return; }
    if (item.source === "upload") { el.lease.textContent = "Your own image (not from the queue)"; el.reclaim.hidden = true; return; }
    const expires = Number(item.lease_expires);
    if (!Number.isFinite(expires) || expires <= 0) { el.lease.textContent = ""; el.reclaim.hidden = true; return; }
    const left = Math.floor(expires - (Date.now() + S.clockSkewMs) / 1000);
    if (left <= 0) {
      el.lease.textContent = "Claim expired — claim again before submitting";
      el.lease.classList.add("expired");
      el.reclaim.hidden = false;
      return;
    }
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    const mmss = (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(s).padStart(2, "0");
    el.lease.textContent = "Claim expires in " + mmss;
    if (left < 60) el.lease.classList.add("warn");
    el.reclaim.hidden = true;
  }
  el.reclaim.addEventListener("click", reclaim);
  setInterval(updateLease, 1000);

  // ------------------------------------------------------------------ queue
  let queueSeq = 0;
  async function refreshQueue(quiet) {
    const seq = ++queueSeq;
    const params = new URLSearchParams();
    if (el.filterModel.value) params.set("model", el.filterModel.value);
    const label = el.filterLabel.value.trim();
    if (label) params.set("label", label);
    params.set("limit", String(QUEUE_LIMIT));
    el.refresh.disabled = true;
    try {
      const data = await api("GET", "/api/queue?" + params.toString());
      if (seq !== queueSeq) return;
      renderQueue((data && data.items) || []);
    } catch (err) {
      if (!quiet) showError(err);
    } finally {
      if (seq === queueSeq) el.refresh.disabled = false;
    }
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
      const conf = typeof it.confidence === "number" ? (it.confidence * 100).toFixed(1) + "%" : "–";
      const prio = typeof it.priority === "number" ? it.priority.toFixed(2) : "–";
      btn.title = "Open this item (predicted " + it.predicted_label + ", " + conf + ")";
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = "";
      img.loading = "lazy";
      img.width = 48; img.height = 48;
      img.src = it.image_url || "/api/queue/" + encodeURIComponent(it.id) + "/image";
      const body = document.createElement("span");
      body.className = "qi-body";
      const line1 = document.createElement("span");
      line1.className = "qi-line";
      const lab = document.createElement("span");
      lab.className = "qi-label";
      lab.textContent = "Predicted " + it.predicted_label;
      const cf = document.createElement("span");
      cf.className = "qi-conf";
      cf.textContent = conf;
      line1.append(lab, " ", cf);
      const line2 = document.createElement("span");
      line2.className = "qi-line qi-meta";
      line2.textContent = "priority " + prio + (it.model_name ? " · " + it.model_name + (it.model_version ? " v" + it.model_version : "") : "");
      if (it.claimed_by_me) {
        const mine = document.createElement("span");
        mine.className = "badge";
        mine.textContent = "yours";
        line2.append(" ", mine);
      }
      const reason = document.createElement("span");
      reason.className = "qi-reason";
      reason.textContent = it.reason || "";
      body.append(line1, line2, reason);
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
      if (btn) {
        if (open) btn.setAttribute("aria-current", "true");
        else btn.removeAttribute("aria-current");
      }
    }
  }

  el.queue.addEventListener("click", (e) => {
    const li = e.target.closest("li.queue-item");
    if (li && el.queue.contains(li)) claim(li.dataset.id);
  });
  el.refresh.addEventListener("click", () => refreshQueue(false));
  el.next.addEventListener("click", openNext);
  el.filterModel.addEventListener("change", () => { fillClassList(); refreshQueue(false); });
  let filterTimer = 0;
  el.filterLabel.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => refreshQueue(true), 400);
  });
  el.filterLabel.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); clearTimeout(filterTimer); refreshQueue(false); }
  });
  setInterval(() => { if (!document.hidden) refreshQueue(true); }, QUEUE_AUTO_REFRESH_MS);

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
        : "Scores with your map at the model’s resolution.";
      renderScores(el.scoresNew, (r && r.scores) || [], note);
      S.tryStale = false;
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
    S.busy.submit = true;
    updateControls();
    const body = {};
    if (item.source === "queue") body.review_id = item.reviewId;
    else body.image = item.imageB64;
    body.attention = { height: S.H, width: S.W, values: roundedList(S.map) };
    body.label = el.label.value || String(item.predicted_label);
    body.predicted_label = item.predicted_label;
    body.prediction_id = item.prediction_id;
    body.model_name = item.model_name;
    body.model_version = item.model_version;
    body.idempotency_key = item.idempotencyKey;
    try {
      await api("POST", "/api/corrections", body);
      if (S.item === item) closeItem();
      clearError();
      setStatus("Correction stored");
      refreshQueue(true);
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
  }

  async function skip() {
    const item = S.item;
    if (!item || S.busy.skip || S.busy.submit) return;
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
      setStatus("Item skipped");
      refreshQueue(true);
    } catch (err) {
      showError(err);
      // A claim that is already gone cannot be released: close the item anyway.
      if (err instanceof ApiError && (err.status === 404 || err.status === 409)) {
        if (S.item === item) closeItem();
        refreshQueue(true);
      }
    } finally {
      S.busy.skip = false;
      updateControls();
    }
  }

  el.tryBtn.addEventListener("click", tryIt);
  el.submit.addEventListener("click", submit);
  el.skip.addEventListener("click", skip);

  // ------------------------------------------------------------ own image
  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.onload = () => {
        const s = String(fr.result || "");
        const comma = s.indexOf(",");
        resolve(comma >= 0 ? s.slice(comma + 1) : s);
      };
      fr.onerror = () => reject(new ApiError(0, "The file could not be read."));
      fr.readAsDataURL(file);
    });
  }

  async function openUpload(file) {
    if (!file || S.busy.open || S.busy.submit) return;
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
        fileName: file.name || "",
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
  const NON_TEXT_INPUTS = new Set(["checkbox", "radio", "range", "button", "submit", "reset", "file", "color", "image"]);
  function isTyping(t) {
    if (!t || t === document.body) return false;
    if (t.isContentEditable) return true;
    const tag = t.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    if (tag === "INPUT") return !NON_TEXT_INPUTS.has((t.type || "text").toLowerCase());
    return false;
  }

  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.isComposing) return;
    if (e.key === "Escape" && !el.error.hidden) { clearError(); return; }
    if (isTyping(e.target)) return;
    const ctrl = e.ctrlKey || e.metaKey;
    const key = (e.key || "").toLowerCase();
    if (ctrl && !e.altKey) {
      if (key === "z" || e.code === "KeyZ") { e.preventDefault(); if (e.shiftKey) redo(); else undo(); }
      else if (key === "y" || e.code === "KeyY") { e.preventDefault(); redo(); }
      else if (e.key === "Enter") { e.preventDefault(); if (!e.repeat) submit(); }
      return;
    }
    if (e.altKey) return;
    if (e.code === "BracketLeft" || e.key === "[" || e.key === "{") {
      e.preventDefault(); setSize(S.size - (e.shiftKey ? 5 : 1)); return;
    }
    if (e.code === "BracketRight" || e.key === "]" || e.key === "}") {
      e.preventDefault(); setSize(S.size + (e.shiftKey ? 5 : 1)); return;
    }
    if (e.repeat) return;
    switch (key) {
      case "n": e.preventDefault(); openNext(); break;
      case "a": e.preventDefault(); setBrush("attend"); break;
      case "i": e.preventDefault(); setBrush("ignore"); break;
      case "e": e.preventDefault(); setEdge(S.edge === "soft" ? "hard" : "soft"); break;
      case "m": e.preventDefault(); el.showMap.checked = !el.showMap.checked; requestRender(); break;
      case "p":
        e.preventDefault();
        el.preview.checked = !el.preview.checked;
        if (el.preview.checked) el.showMap.checked = true;
        requestRender();
        break;
      case "t": e.preventDefault(); tryIt(); break;
      case "s": e.preventDefault(); skip(); break;
      default: break;
    }
  });

  el.errorDismiss.addEventListener("click", clearError);

  // The shortcuts help closes on a click elsewhere or on Escape.
  const shortcuts = $("shortcuts");
  document.addEventListener("click", (e) => {
    if (shortcuts && shortcuts.open && !shortcuts.contains(e.target)) shortcuts.open = false;
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && shortcuts && shortcuts.open) shortcuts.open = false;
  });

  // ---------------------------------------------------------------- session
  el.signout.addEventListener("click", async () => {
    el.signout.disabled = true;
    releaseQuietly(S.item);
    try { await api("DELETE", "/api/session"); } catch (_) { /* going to the sign-in page anyway */ }
    location.assign("/");
  });

  function fillClassList() {
    const chosen = el.filterModel.value;
    const seen = new Set();
    el.classList.textContent = "";
    for (const m of S.models) {
      if (chosen && m.name !== chosen) continue;
      for (const c of m.classes || []) {
        if (seen.has(String(c))) continue;
        seen.add(String(c));
        const opt = document.createElement("option");
        opt.value = String(c);
        el.classList.appendChild(opt);
      }
    }
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
      for (const m of S.models) {
        const opt = document.createElement("option");
        opt.value = m.name;
        opt.textContent = m.name;
        el.filterModel.appendChild(opt);
      }
      fillClassList();
      if (S.item) fillLabelSelect(classesFor(S.item.model_name, S.item.scores, S.item.predicted_label), el.label.value || S.item.predicted_label);
    } catch (err) {
      showError(err);
    }
  }

  // ---------------------------------------------------------- test hooks
  window.editorState = () => ({
    itemId: S.item && S.item.source === "queue" ? S.item.reviewId : null,
    source: S.item ? S.item.source : null,
    width: S.W,
    height: S.H,
    modelHeight: S.mh,
    modelWidth: S.mw,
    undoDepth: S.undo.length,
    redoDepth: S.redo.length,
    brush: S.brush,
    size: S.size,
    edge: S.edge,
  });
  window.editorMapAt = (x, y) => {
    if (!S.map) return null;
    x = Math.floor(x); y = Math.floor(y);
    if (x < 0 || y < 0 || x >= S.W || y >= S.H) return null;
    return S.map[y * S.W + x];
  };

  // ------------------------------------------------------------------ start
  if (typeof ResizeObserver === "function") new ResizeObserver(fitCanvas).observe(el.dropzone);
  window.addEventListener("resize", fitCanvas);
  setBrush(el.brushIgnore.checked ? "ignore" : "attend");
  setSize(el.brushSize.value);
  setEdge(el.brushEdge.value);
  el.opacityValue.textContent = el.opacity.value;
  closeItem();
  loadMe();
  loadModels().then(() => refreshQueue(false));
})();
