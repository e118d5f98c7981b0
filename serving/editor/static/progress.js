// The header's progress: items Open next can still give, and the corrections sent today.
import { myCorrections } from "./api.js";
import { el } from "./elements.js";
import { S } from "./state.js";

// Today's start on this computer's clock, in seconds since the epoch.
export function midnight() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return d.getTime() / 1000;
}

export async function refreshDone() {
  try {
    const data = await myCorrections(midnight());
    S.doneToday = ((data && data.items) || []).filter((i) => i.state !== "withdrawn").length;
    renderProgress();
  } catch (_) { /* the count waits for the next try */ }
}

export function renderProgress() {
  const parts = [];
  if (S.left !== null) parts.push(S.left + " left" + (el.filterModel.value || el.filterLabel.value ? " with these filters" : ""));
  if (S.doneToday !== null) parts.push(S.doneToday + " done today");
  el.progress.textContent = parts.join(" · ");
}
