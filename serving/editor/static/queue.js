// The review queue's list and its filters. Open next and the list use the same filters: the list shows what
// Open next gives, in its order. Claiming from it is claims.js.
import { imageUrl, listQueue } from "./api.js";
import { el } from "./elements.js";
import { showError } from "./messages.js";
import { renderProgress } from "./progress.js";
import { S } from "./state.js";

const QUEUE_LIMIT = 50;
const QUEUE_AUTO_REFRESH_MS = 30000;

export const filters = () => ({ model: el.filterModel.value, label: el.filterLabel.value });

let queueSeq = 0; // only the latest refresh's answer is shown
export async function refreshQueue(quiet) {
  const seq = ++queueSeq;
  el.refresh.disabled = true;
  try {
    const data = await listQueue(filters(), QUEUE_LIMIT);
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
    img.src = imageUrl(it);
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

export function markOpenInQueue() {
  const id = S.item && S.item.source === "queue" ? S.item.reviewId : null;
  for (const li of el.queue.querySelectorAll("li.queue-item")) {
    const open = li.dataset.id === id;
    li.classList.toggle("current", open);
    const btn = li.querySelector("button");
    if (open) btn.setAttribute("aria-current", "true");
    else btn.removeAttribute("aria-current");
  }
}

// The class filter offers the chosen model's classes (all models' without one).
export function fillFilterClasses() {
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

export function wireQueue() {
  el.refresh.addEventListener("click", () => refreshQueue(false));
  el.filterModel.addEventListener("change", () => { fillFilterClasses(); refreshQueue(false); });
  el.filterLabel.addEventListener("change", () => refreshQueue(false));
  setInterval(() => { if (!document.hidden) refreshQueue(true); }, QUEUE_AUTO_REFRESH_MS);
}
