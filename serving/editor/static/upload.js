// The expert's own image, chosen or dropped on the picture area: predicted, then opened like a queue item
// (nothing is claimed).
import { ApiError, predict } from "./api.js";
import { updateControls } from "./controls.js";
import { el } from "./elements.js";
import { loadImage, mayLeave, openItem, releaseQuietly } from "./item.js";
import { clearError, setStatus, showError } from "./messages.js";
import { S } from "./state.js";

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
    const pred = await predict({ image: b64 });
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

const hasFiles = (e) => !!e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");

export function wireUpload() {
  el.upload.addEventListener("change", () => {
    const f = el.upload.files && el.upload.files[0];
    el.upload.value = "";
    if (f) openUpload(f);
  });

  let dragDepth = 0; // enter and leave come in pairs for every child the file is dragged over
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
}
