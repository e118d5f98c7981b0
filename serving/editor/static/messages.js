// What the page says: an error or a note over the picture, a status line, and an in-page question.
import { SignedOut } from "./api.js";
import { el } from "./elements.js";

// Messages float over the top of the picture: they never move it.
export function showError(err, kind) {
  if (err instanceof SignedOut) return;
  const text = typeof err === "string" ? err : (err && err.message) || "Something went wrong.";
  el.errorMessage.textContent = text;
  el.error.classList.toggle("info", kind === "info");
  el.error.hidden = false;
}
export function clearError() {
  el.error.hidden = true;
  el.errorMessage.textContent = "";
}
export function setStatus(text) { el.status.textContent = text; }

// An in-page question (a modal dialog): resolves true for yes.
export function ask(question, yes, no) {
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

export function wireMessages() {
  el.errorDismiss.addEventListener("click", clearError);
}
