// Which buttons work now, and what the expert still has to do before a correction can be submitted.
import { el } from "./elements.js";
import { S } from "./state.js";

export function missing() {
  const need = [];
  if (!S.decidedAny && !S.confirmed) need.push("paint the map (or press “The map is right”)");
  if (S.label === null) need.push("choose the class");
  return need;
}

export function updateControls() {
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
