// The signed-in expert: their name, the models the gateway serves (for the filters and the class list), and
// signing out.
import { endSession, leave, servedModels, whoAmI } from "./api.js";
import { el } from "./elements.js";
import { mayLeave, releaseQuietly } from "./item.js";
import { showError } from "./messages.js";
import { fillFilterClasses } from "./queue.js";
import { S } from "./state.js";

export async function loadMe() {
  try {
    const me = await whoAmI();
    el.expertName.textContent = (me && me.expert) || "expert";
  } catch (err) {
    el.expertName.textContent = "expert";
    showError(err);
  }
}

export async function loadModels() {
  try {
    const data = await servedModels();
    S.models = ((data && data.models) || []).map((m) => ({ name: String(m.name), classes: (m.classes || []).map(String) }));
    for (const m of S.models) el.filterModel.add(new Option(m.name, m.name));
    fillFilterClasses();
  } catch (err) {
    showError(err);
  }
}

export function wireSession() {
  el.signout.addEventListener("click", async () => {
    if (!(await mayLeave("Sign out"))) return;
    el.signout.disabled = true;
    releaseQuietly(S.item);
    leave();
    try { await endSession(); } catch (_) { /* going to the sign-in page anyway */ }
    location.assign("/");
  });
}
