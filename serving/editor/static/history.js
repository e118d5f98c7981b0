// The expert's decisions and their history: every change to the map is a decision that can be undone.
// Reset and Clear decide the whole map; "The map is right" confirms the model's map as it is.
import { updateControls } from "./controls.js";
import { el } from "./elements.js";
import { setStatus } from "./messages.js";
import { requestRender } from "./render.js";
import { S } from "./state.js";

export function snapshot() { return { map: S.map.slice(), decided: S.decided.slice(), confirmed: S.confirmed }; }

// Painting changes the map: a confirmation of the model's map no longer holds.
export function decisionMade(snap) {
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

export function undo() {
  if (!S.item || S.stroke || !S.undo.length) return;
  S.redo.push(snapshot());
  restore(S.undo.pop());
}
export function redo() {
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

export function wireHistory() {
  el.undo.addEventListener("click", undo);
  el.redo.addEventListener("click", redo);
  el.reset.addEventListener("click", resetMap);
  el.clear.addEventListener("click", clearMap);
  el.confirmMap.addEventListener("click", confirmMap);
}
