// "My corrections": the expert's own corrections, what became of each, and withdrawing one still waiting.
// It shares the left column with the queue, as a second tab.
import { myCorrections, withdrawCorrection } from "./api.js";
import { el } from "./elements.js";
import { ask, setStatus, showError } from "./messages.js";
import { midnight, renderProgress } from "./progress.js";
import { S } from "./state.js";

const STATE_WORDS = { pending: "waiting", consumed: "used", rejected: "rejected", withdrawn: "withdrawn" };

function showTab(mine) {
  el.tabQueue.setAttribute("aria-selected", String(!mine));
  el.tabMine.setAttribute("aria-selected", String(mine));
  el.tabQueue.tabIndex = mine ? -1 : 0;
  el.tabMine.tabIndex = mine ? 0 : -1;
  el.queuePanel.hidden = mine;
  el.minePanel.hidden = !mine;
  if (mine) refreshMine();
}

function totalsWords(t) {
  const parts = [t.pending + " waiting", t.consumed + " used", t.rejected + " rejected", t.withdrawn + " withdrawn"];
  if (!t.total) return "";
  return t.total + (t.total === 1 ? " correction: " : " corrections: ") + parts.join(", ") + ". "
    + (t.confirmations ? t.confirmations + " of them confirmed the model’s map as right." : "");
}

async function refreshMine() {
  try {
    const data = await myCorrections();
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

async function withdraw(e) {
  const btn = e.target.closest("button.withdraw");
  if (!btn) return;
  const id = btn.closest("li").dataset.id;
  if (!(await ask("Withdraw this correction? No retraining run will use it. This cannot be undone.", "Withdraw", "Keep it"))) return;
  btn.disabled = true;
  try {
    await withdrawCorrection(id);
    setStatus("Correction withdrawn: no run will use it.");
  } catch (err) {
    showError(err);
  }
  refreshMine();
}

export function wireMine() {
  el.tabQueue.addEventListener("click", () => showTab(false));
  el.tabMine.addEventListener("click", () => showTab(true));
  for (const tab of [el.tabQueue, el.tabMine]) {
    tab.addEventListener("keydown", (e) => { // the arrow keys move between the two tabs
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      e.preventDefault();
      const mine = tab === el.tabQueue;
      showTab(mine);
      (mine ? el.tabMine : el.tabQueue).focus();
    });
  }
  el.mineList.addEventListener("click", withdraw);
}
