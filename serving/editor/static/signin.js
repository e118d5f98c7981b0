"use strict";
(() => {
  const form = document.getElementById("signin-form");
  const input = document.getElementById("token");
  const button = document.getElementById("signin-button");
  const errorBox = document.getElementById("signin-error");

  function showError(text) {
    errorBox.textContent = text;
    input.setAttribute("aria-invalid", text ? "true" : "false");
  }

  function detailOf(data, status) {
    if (data && typeof data.detail === "string" && data.detail) return data.detail;
    if (data && Array.isArray(data.detail)) {
      const parts = data.detail.map((d) => (d && d.msg) || "").filter(Boolean);
      if (parts.length) return parts.join("; ");
    }
    if (status === 401 || status === 403) return "That token was not accepted. Check it and try again.";
    if (status === 429) return "Too many attempts. Wait a moment and try again.";
    if (status >= 500) return "The service is unavailable right now. Try again in a moment.";
    return "Sign-in failed (HTTP " + status + ").";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      showError("Enter your expert token.");
      input.focus();
      return;
    }
    showError("");
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      let res;
      try {
        res = await fetch("/api/session", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ token }),
        });
      } catch (_) {
        showError("Cannot reach the service. Check the network connection and try again.");
        return;
      }
      if (res.ok) {
        location.reload(); // the page asked for (the editor, or the Models page) now that there is a session
        return;
      }
      let data = null;
      try { data = await res.json(); } catch (_) { data = null; }
      showError(detailOf(data, res.status));
      input.select();
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  });

  input.addEventListener("input", () => { if (errorBox.textContent) showError(""); });
  input.focus();
})();
