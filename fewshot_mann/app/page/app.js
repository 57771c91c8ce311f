// fewshot-mann serve: the page's few behaviours, vanilla JavaScript, nothing loaded from elsewhere.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const api = (path) => `${path}?token=${encodeURIComponent(token)}`;
const $ = (id) => document.getElementById(id);
let supportImages = [];  // thumbnails by support index, for the nearest images beside each case

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function showError(message) {
  $("error").textContent = message ? String(message).split("\n")[0] : "";
  $("error").hidden = !message;
}

function busy(text, done, total) {  // with done / total: a counted bar, else an indeterminate one
  $("busy").hidden = !text;
  if (total) { $("busy").max = total; $("busy").value = done; } else $("busy").removeAttribute("value");
  $("status-text").textContent = text || "";
}

async function call(path, options = {}, what = "working") {
  showError("");
  busy(what);
  try {
    const response = await fetch(api(path), options);
    let body = {};
    try { body = await response.json(); } catch (e) { body = {error: `${response.status} ${response.statusText}`}; }
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  } catch (e) {
    showError(e.message);
    throw e;
  } finally {
    busy("");
  }
}

function list(id, items) {
  $(id).replaceChildren(...items.map((t) => el("li", {text: t})));
}

// ---------------------------------------------------------------- model
function showModel(info) {
  const rows = [["model", `${info.model} (${info.encoder}), ${info.labels} labels, ${info.ways}-way, ${info.instances} instances`],
                ["trained on", info.trained_on || "?"], ["training episodes", info.episodes_trained ?? "?"]];
  for (const [k, v] of Object.entries(info.accuracy || {})) rows.push([k, v]);
  if (!Object.keys(info.accuracy || {}).length) rows.push(["measured accuracy", "see reports/README.md for this checkpoint"]);
  $("model-info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: String(v)})]));
  $("adapt-label").hidden = !info.adapt;
  $("finetune-label").title = info.finetune ? "" : "this model reads no timm backbone: fine-tuning is refused";
  document.body.dataset.model = info.name;
}

async function loadModel() {
  const info = await call("api/model", {method: "POST", headers: {"content-type": "application/json"},
                                        body: JSON.stringify({name: $("model").value})}, "loading the model");
  showModel(info);
  $("support-grid").replaceChildren();
  $("answers").hidden = true;
  $("downloads").hidden = true;
}

// ---------------------------------------------------------------- support
function relative(file) {  // "picked/class/a.png" -> "class/a.png"
  const path = file.webkitRelativePath || file.name;
  const parts = path.split("/");
  return parts.length > 1 ? parts.slice(1).join("/") : path;
}

function showSupport(view) {
  supportImages = [];
  const rows = view.classes.map((c) => {
    const thumbs = c.images.map((im) => { supportImages[im.index] = im.src; return el("img", {src: im.src, alt: c.name}); });
    return el("div", {class: "class-row"}, el("span", {class: "name", text: c.name}),
              el("span", {class: "count", text: `${c.images.length}`}), el("span", {class: "thumbs"}, ...thumbs));
  });
  $("support-grid").replaceChildren(...rows);
  list("problems", view.problems.map((p) => `${p.kind}: ${p.path || "."}: ${p.message}`));
  list("support-warnings", view.warnings);
  const tuned = [view.finetune ? `backbone fine-tuned ${view.finetune} steps to this support set` : "",
                 view.adapt ? `model adapted ${view.adapt} steps to it` : ""].filter(Boolean);
  $("support-note").textContent = tuned.length ? `The cases are answered with the ${tuned.join(", ")}.` : "";
  $("support-note").hidden = !tuned.length;
  $("reliability-table").hidden = true;  // a check of the previous support set no longer applies
  $("reliability-charts").replaceChildren();
  document.body.dataset.support = `${view.classes.length} classes`;
}

function followFinetuning() {  // the fine-tuning steps as a counted bar while the support upload runs
  const timer = setInterval(async () => {
    const job = await fetch(api("api/job")).then((r) => r.json()).catch(() => ({}));
    if (job.task === "fine-tuning" && job.running) busy(`fine-tuning the backbone: ${job.done} / ${job.total} steps`, job.done, job.total);
  }, 300);
  return () => clearInterval(timer);
}

async function giveSupport() {
  const files = [...$("support-folder").files];
  if (!files.length) return;
  const form = new FormData();
  form.append("adapt", $("adapt").value || "0");
  form.append("finetune", $("finetune").value || "0");
  for (const f of files) form.append("files", f, relative(f));
  const stop = Number($("finetune").value) > 0 ? followFinetuning() : () => {};
  try {
    showSupport(await call("api/support", {method: "POST", body: form}, `checking and embedding ${files.length} support images`));
  } finally {
    stop();
  }
}

// ---------------------------------------------------------------- cases
function fill(p) {  // a width set through the DOM: the page's policy refuses inline style attributes
  const node = el("span", {class: "fill"});
  node.style.width = `${Math.round(p * 120)}px`;
  return node;
}

function bars(probabilities, prediction) {
  return Object.entries(probabilities).sort((a, b) => b[1] - a[1]).map(([name, p]) =>
    el("div", {class: name === prediction ? "bar top" : "bar"}, el("span", {class: "label", text: name}),
       fill(p), el("span", {text: p.toFixed(2)})));
}

function showAnswers(result) {
  const rows = result.cases.map((r) => {
    const flags = [];
    if (r.low_confidence) flags.push(el("span", {class: "flag low", text: "low confidence"}));
    if (r.unknown) flags.push(el("span", {class: "flag unknown", text: "unknown"}));
    const near = r.nearest.map((i, k) => el("img", {src: supportImages[i] || "", alt: r.nearest_class[k], title: r.nearest_class[k]}));
    return el("tr", {},
      el("td", {}, el("img", {src: r.src, alt: r.query}), el("div", {class: "query", text: r.query})),
      el("td", {class: "prediction", text: r.prediction}),
      el("td", {}, ...bars(r.probabilities, r.prediction)),
      el("td", {class: "flags"}, ...flags),
      el("td", {}, ...near));
  });
  $("answers").querySelector("tbody").replaceChildren(...rows);
  $("answers").hidden = false;
  list("case-warnings", result.warnings);
  $("download-csv").href = api("api/answers.csv");
  $("download-json").href = api("api/answers.json");
  $("downloads").hidden = false;
  document.body.dataset.answers = `${result.cases.length}`;
}

async function giveCases(input) {
  const files = [...input.files];
  if (!files.length) return;
  const form = new FormData();
  form.append("threshold", $("threshold").value);
  for (const f of files) form.append("files", f, relative(f));
  showAnswers(await call("api/cases", {method: "POST", body: form}, `answering ${files.length} cases`));
}

// ---------------------------------------------------------------- reliability
function showReliability(result) {  // each row of the model, then the baselines on its trials, then its charts
  const pct = (x) => `${(100 * x).toFixed(1)} %`;
  const same = (a, b) => a.ways === b.ways && a.shots === b.shots;
  const line = (name, r, cls) => el("tr", {class: cls},
    ...[name, r.ways, r.shots, pct(r.accuracy), `± ${pct(r.ci95)}`, r.episodes].map((v) => el("td", {text: String(v)})));
  const rows = result.rows.flatMap((r) => [line("this model", r, "model-row"),
    ...result.baselines.filter((b) => same(b, r)).map((b) => line(b.name, b, "baseline-row"))]);
  $("reliability-table").querySelector("tbody").replaceChildren(...rows);
  $("reliability-table").hidden = false;
  $("reliability-charts").replaceChildren(...result.rows.map((r) => Charts.trustBlock(r)));
  list("reliability-warnings", result.warnings);
}

async function reliability() {
  await call("api/reliability", {method: "POST", headers: {"content-type": "application/json"},
                                 body: JSON.stringify({episodes: Number($("episodes").value || 200)})}, "");
  const bar = $("job-progress");
  bar.hidden = false;
  for (;;) {
    const job = await fetch(api("api/job")).then((r) => r.json());
    if (job.task !== "reliability check") { bar.hidden = true; busy(""); return; }  // a new support set took over
    bar.max = job.total || 1;
    bar.value = job.done;
    busy(`reliability check: ${job.done} / ${job.total || "?"} trials`);
    if (!job.running) {
      busy("");
      if (job.error) showError(job.error); else showReliability(job.result);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

// ---------------------------------------------------------------- start
async function start() {
  const state = await call("api/state", {}, "loading");
  $("model").replaceChildren(...state.models.map((m) => el("option", {value: m.name, text: m.name})));
  if (state.model && state.model.name) { $("model").value = state.model.name; showModel(state.model); }
  if (state.support) showSupport(state.support);
  $("load-model").addEventListener("click", () => loadModel().catch(() => {}));
  $("support-folder").addEventListener("change", () => giveSupport().catch(() => {}));
  $("cases").addEventListener("change", (e) => giveCases(e.target).catch(() => {}));
  $("cases-folder").addEventListener("change", (e) => giveCases(e.target).catch(() => {}));
  $("reliability").addEventListener("click", () => reliability().catch(() => {}));
  document.body.dataset.ready = "yes";
}

document.addEventListener("DOMContentLoaded", () => start().catch(() => {}));
