// A list of scores (class and probability, as bars), for the model's map or the expert's.
import { el } from "./elements.js";
import { clamp01 } from "./maps.js";

export function renderScores(list, scores, note) {
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
