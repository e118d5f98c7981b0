// The class of the image: the expert's own choice, nothing chosen when an item opens. Number keys choose by
// position.
import { updateControls } from "./controls.js";
import { el } from "./elements.js";
import { S } from "./state.js";

// The model's classes; without them, the scored ones; and the predicted one in any case.
export function classesFor(modelName, scores, predicted) {
  const model = S.models.find((m) => m.name === modelName);
  const classes = model && model.classes.length ? model.classes.slice() : (scores || []).map((s) => String(s.label));
  if (predicted && !classes.includes(String(predicted))) classes.push(String(predicted));
  return classes;
}

export function fillClasses(classes) {
  el.classList.textContent = "";
  // Digits fit five to a row; words get columns as wide as the longest, with its key (a long one is cut short,
  // its title says it whole).
  const longest = Math.max(1, ...classes.map((c) => c.length));
  el.classList.style.setProperty("--class-min", longest > 1 ? "calc(" + Math.min(longest, 24) + "ch + 3em)" : "46px");
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

export function chooseClass(value) {
  if (!S.item || value === undefined || value === null) return;
  const input = Array.from(el.classList.querySelectorAll("input")).find((i) => i.value === String(value));
  if (!input) return;
  input.checked = true;
  S.label = String(value);
  updateLabelNote();
  updateControls();
}

export function updateLabelNote() {
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

export function wireClasses() {
  el.classList.addEventListener("change", (e) => { if (e.target.name === "label") chooseClass(e.target.value); });
  el.usePredicted.addEventListener("click", () => S.item && chooseClass(S.item.predicted_label));
}
