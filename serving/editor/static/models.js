// The Models page (models.html): the history of the served model's versions. Every retraining run, promoted or
// not, with its time, the corrections it used, the gate's figures and verdict and its report image; the version
// served now; the gate's figures across versions, drawn here as SVG (nothing is loaded from elsewhere); what
// operators did. An operator may roll back, requeue or reject, each after a confirmation; the gateway asks the
// feedback service, which refuses anyone else and records who did it.
//
// Stable handles for scripts and tests: #served-version, #rollback; #runs > li.run[data-run][data-outcome] with
// tr.criterion[data-name] (td.served, td.candidate, td.change, td.verdict), img.report, button.requeue and
// button.reject; #charts > figure.chart[data-name] > svg circle.point[data-run][data-side]; #actions > li.action;
// the confirmation: dialog #confirm, #confirm-yes, #confirm-no; document.body.dataset.loads counts the loads.
import { ApiError, SignedOut, endSession, modelHistory, rejectRun, requeueRun, rollBack, whoAmI } from "./api.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let shown = null; // the last /api/history answer
let busy = false;

// ------------------------------------------------------------------ words and numbers
function when(seconds) {
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}
const isAccuracy = (name) => name.startsWith("accuracy");
function figure(name, value) {
  if (value === null || value === undefined) return "–";
  return isAccuracy(name) ? (100 * value).toFixed(1) + "%" : value.toFixed(3);
}
function change(name, value) {
  const sign = value > 0 ? "+" : value < 0 ? "−" : "±";
  const magnitude = Math.abs(value);
  return sign + (isAccuracy(name) ? (100 * magnitude).toFixed(1) + " pt" : magnitude.toFixed(3));
}
function versions(run) {
  if (run.outcome === "promoted") return "version " + run.served_version + " → " + run.version;
  return run.served_version ? "from version " + run.served_version : "";
}
function counts(corrections) {
  const parts = Object.entries(corrections).map(([state, n]) => n + " " + state);
  return parts.length ? parts.join(", ") : "none";
}
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
function say(text) {
  $("status").textContent = text;
  $("error-message").textContent = "";
}
function fail(error) {
  if (error instanceof SignedOut) return;
  $("status").textContent = "";
  $("error-message").textContent = error instanceof ApiError ? error.message : String(error);
}

// ------------------------------------------------------------------ confirmation
function confirmed(text, yes) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yes;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").onclick = $("confirm-no").onclick = dialog.oncancel = null;
      dialog.close();
      resolve(answer);
    };
    $("confirm-yes").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
    dialog.oncancel = () => done(false);
    dialog.showModal();
  });
}

async function act(question, yes, call, said) {
  if (busy || !(await confirmed(question, yes))) return;
  busy = true;
  try {
    say(said(await call()));
    await load(false);
  } catch (error) {
    fail(error);
  } finally {
    busy = false;
  }
}

// ------------------------------------------------------------------ served now
function renderServed(h) {
  const served = h.served;
  $("served-version").textContent = served ? "Version " + served.version + " of " + h.model : "Nothing recorded";
  $("served-detail").textContent = served ? "(" + served.archive + ", since " + when(served.since) + ")" : "";
  const button = $("rollback");
  button.hidden = !h.operator;
  button.disabled = !served || !h.rollback_to;
  button.textContent = h.rollback_to ? "Roll back to version " + h.rollback_to : "Roll back";
  let note = "";
  if (h.operator && !h.can_roll_back) note = "This editor runs without the model store: roll back with abn rollback.";
  else if (h.operator && served && !h.rollback_to) note = "No earlier version is in the model store.";
  $("rollback-note").textContent = note;
}

// ------------------------------------------------------------------ the runs
function criterionRow(c, reported) {
  const row = el("tr", reported ? "reported" : "criterion " + (c.passed ? "passed" : "failed"));
  row.dataset.name = c.name;
  row.append(el("th", "name", c.name + (reported ? " (reported)" : "")));
  row.append(el("td", "served", figure(c.name, c.served)));
  row.append(el("td", "candidate", figure(c.name, c.candidate)));
  if (reported) {
    row.append(el("td", "change", ""), el("td", "samples", ""), el("td", "verdict", ""));
    return row;
  }
  const interval = " [" + change(c.name, c.change_low) + ", " + change(c.name, c.change_high) + "]";
  row.append(el("td", "change", change(c.name, c.change) + interval));
  row.append(el("td", "samples", String(c.samples)));
  row.append(el("td", "verdict", c.passed ? "pass" : "FAIL"));
  row.title = c.detail;
  return row;
}

function figuresTable(run) {
  const table = el("table", "figures");
  const head = el("tr");
  for (const h of ["The gate", "Served", "Candidate", "Change [interval]", "Seen", ""]) head.append(el("th", "", h));
  table.append(el("thead"), el("tbody"));
  table.tHead.append(head);
  for (const c of run.criteria) table.tBodies[0].append(criterionRow(c, false));
  for (const f of run.reported) table.tBodies[0].append(criterionRow(f, true));
  return table;
}

function runItem(run, h) {
  const item = el("li", "run outcome-" + run.outcome);
  item.dataset.run = run.run;
  item.dataset.outcome = run.outcome;
  const head = el("div", "run-head");
  head.append(el("span", "state-badge outcome", run.outcome));
  head.append(el("strong", "run-versions", versions(run)));
  const time = el("time", "run-time", when(run.ended));
  time.dateTime = new Date(run.ended * 1000).toISOString();
  head.append(time, el("span", "muted small", "run " + run.run + " · " + Math.round(run.ended - run.started) + " s"));
  item.append(head);

  const body = el("div", "run-body");
  const text = el("div", "run-text");
  if (run.criteria.length) {
    text.append(
      el(
        "p",
        "run-summary",
        "Fine-tuned on " + run.corrections_used + " corrections, checked on " + run.corrections_kept_back +
          " kept back. Decided by: " + run.decided_by + ".",
      ),
    );
    text.append(figuresTable(run));
  }
  if (run.reason) text.append(el("p", "run-reason", run.reason));
  const taken = Object.keys(run.corrections).length;
  if (taken) text.append(el("p", "run-corrections muted", "Its corrections now: " + counts(run.corrections)));
  if (h.operator && taken) {
    const buttons = el("div", "button-row run-actions");
    const rejected = run.corrections.rejected || 0;
    const pending = run.corrections.pending || 0;
    if (rejected) {
      const requeue = el("button", "btn requeue", "Requeue " + rejected);
      requeue.type = "button";
      requeue.title = "Make this run's rejected corrections pending again: the next run may use them";
      requeue.onclick = () =>
        act(
          "Make the " + rejected + " rejected corrections of run " + run.run + " pending again? The next retraining run may use them.",
          "Requeue",
          () => requeueRun(run.run),
          (a) => a.requeued + " corrections of run " + run.run + " are pending again.",
        );
      buttons.append(requeue);
    }
    if (pending) {
      const reject = el("button", "btn reject", "Reject " + pending);
      reject.type = "button";
      reject.title = "Set this run's pending corrections aside: no run uses them until they are requeued";
      reject.onclick = () =>
        act(
          "Set the " + pending + " pending corrections of run " + run.run + " aside? No retraining run uses them until they are requeued.",
          "Reject",
          () => rejectRun(run.run),
          (a) => a.rejected + " corrections of run " + run.run + " are set aside.",
        );
      buttons.append(reject);
    }
    if (buttons.childElementCount) text.append(buttons);
  }
  body.append(text);
  if (run.report_url) {
    const link = el("a", "report-link");
    link.href = run.report_url;
    link.target = "_blank";
    link.rel = "noopener";
    link.title = "The report: kept-back corrections with the served and the candidate's maps (opens full size)";
    const image = el("img", "report");
    image.src = run.report_url;
    image.alt = "Report of run " + run.run + ": kept-back corrections with the served and the candidate's maps";
    link.append(image);
    body.append(link);
  }
  item.append(body);
  return item;
}

function renderRuns(h) {
  $("runs").replaceChildren(...h.runs.map((run) => runItem(run, h)));
  $("no-runs").hidden = h.runs.length > 0;
}

// ------------------------------------------------------------------ the charts
function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(name, points) {
  const W = 340, H = 190, left = 48, right = 12, top = 12, bottom = 34;
  const values = points.flatMap((p) => [p.served, p.candidate, p.low, p.high]).filter((v) => v !== null);
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = Math.max((hi - lo) * 0.1, 0.01);
  lo -= pad; hi += pad;
  if (isAccuracy(name)) { lo = Math.max(0, lo); hi = Math.min(1, hi); } // an interval may reach past them
  const x = (i) => left + (points.length === 1 ? (W - left - right) / 2 : (i * (W - left - right)) / (points.length - 1));
  const y = (v) => top + ((hi - Math.min(hi, Math.max(lo, v))) * (H - top - bottom)) / (hi - lo);

  const box = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
  box.append(svg("title", {}, name + " across the judged runs"));
  for (let k = 0; k <= 3; k++) {
    const v = lo + ((hi - lo) * k) / 3;
    box.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }));
    box.append(svg("text", { x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, figure(name, v)));
  }
  const served = points.filter((p) => p.served !== null);
  if (served.length > 1) {
    const line = served.map((p) => x(p.i) + "," + y(p.served)).join(" ");
    box.append(svg("polyline", { points: line, class: "served-line" }));
  }
  for (const p of points) {
    const cx = x(p.i);
    if (p.low !== null) box.append(svg("line", { x1: cx, x2: cx, y1: y(p.low), y2: y(p.high), class: "interval" }));
    const tip = p.run + ": served " + figure(name, p.served) + ", candidate " + figure(name, p.candidate) + " (" + p.outcome + ")";
    for (const side of ["served", "candidate"]) {
      if (p[side] === null) continue;
      const dot = svg("circle", {
        cx, cy: y(p[side]), r: side === "served" ? 4.5 : 4,
        class: "point " + side + " outcome-" + p.outcome,
        "data-run": p.run, "data-side": side, "data-value": p[side],
      });
      dot.append(svg("title", {}, tip));
      box.append(dot);
    }
    box.append(svg("text", { x: cx, y: H - bottom + 16, class: "tick", "text-anchor": "middle" }, p.label));
  }
  const wrap = el("figure", "chart");
  wrap.dataset.name = name;
  wrap.append(el("figcaption", "", name), box);
  return wrap;
}

function renderCharts(h) {
  const judged = h.runs.filter((r) => r.criteria.length).reverse(); // oldest first
  const names = [];
  for (const run of judged) for (const c of run.criteria) if (!names.includes(c.name)) names.push(c.name);
  const charts = names.map((name) => {
    const points = [];
    judged.forEach((run, i) => {
      const c = run.criteria.find((k) => k.name === name);
      if (!c) return;
      const base = c.served;
      points.push({
        i, run: run.run, outcome: run.outcome, served: base, candidate: c.candidate,
        low: base === null ? null : base + c.change_low, high: base === null ? null : base + c.change_high,
        label: "v" + run.served_version + (run.outcome === "promoted" ? "→" + run.version : " ✗"),
      });
    });
    return chart(name, points);
  });
  $("charts").replaceChildren(...charts);
  if (!charts.length) $("charts").append(el("p", "muted", "No run has been judged by the gate yet."));
}

// ------------------------------------------------------------------ operator actions
function renderActions(h) {
  $("actions").replaceChildren(
    ...h.actions.map((a) => {
      const item = el("li", "action");
      item.dataset.action = a.action;
      item.append(el("time", "muted small", when(a.time) + " "), el("strong", "actor", a.actor), " ");
      item.append(el("span", "what", a.action + (a.run ? " run " + a.run : "") + ": " + a.detail));
      return item;
    }),
  );
  $("no-actions").hidden = h.actions.length > 0;
}

// ------------------------------------------------------------------ loading
async function load(clearMessages = true) {
  try {
    shown = await modelHistory();
    renderServed(shown);
    renderCharts(shown);
    renderRuns(shown);
    renderActions(shown);
    $("operator-badge").hidden = !shown.operator;
    if (clearMessages) say("");
  } catch (error) {
    fail(error);
  } finally {
    document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
  }
}

$("rollback").onclick = () => {
  const h = shown;
  if (!h || !h.served || !h.rollback_to) return;
  act(
    "Make version " + h.rollback_to + " of " + h.model + " the default again, instead of version " + h.served.version +
      "? Every replica that follows the store serves it too, and the next retraining run starts from it.",
    "Roll back",
    () => rollBack(h.model, h.served.version),
    (a) => "Version " + a.to + " of " + a.model + " is the default again (was " + a.from + ").",
  );
};

$("signout").onclick = async () => {
  try {
    await endSession();
  } catch (_) {
    // signed out either way
  }
  location.assign("/");
};

(async () => {
  try {
    $("expert-name").textContent = (await whoAmI()).expert;
  } catch (error) {
    fail(error);
  }
  await load();
})();
