// The cliptune search page and training page. Plain browser JavaScript, no build step:
// the worker binary serves this file as it is (include_str!).
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "cliptune-token";
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0550ae"];

let models = [];
let defaultModelId = null;

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function setState(state) {
  document.body.dataset.state = state;
}

// Every API call goes through here: bearer token when one is saved, errors as Error with
// the server's message, and the token dialog on 401.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (options.body && !headers["Content-Type"]) headers["Content-Type"] = "application/json";
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) {
    openTokenDialog();
    throw new Error("this server needs an API token");
  }
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!res.ok) {
    const msg = body && body.error ? body.error : (res.status + " " + res.statusText);
    throw new Error(msg);
  }
  return body;
}

function openTokenDialog() {
  const d = $("#token-dialog");
  if (!d.open) {
    $("#token").value = token();
    d.showModal();
    $("#token").focus();
  }
}

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of [].concat(children)) if (c) e.append(c);
  return e;
}

function svg(tag, attrs = {}, children = []) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of [].concat(children)) if (c) e.append(c);
  return e;
}

function modelLabel(m) {
  return m.name + (m.status ? " (" + m.status + ")" : "");
}

function fillModelSelect(select, list, selected) {
  select.replaceChildren();
  for (const m of list) {
    select.append(el("option", { value: m.id, selected: m.id === selected, text: modelLabel(m) }));
  }
}

// An <img> for an item; with a token the image is fetched with it (an <img src> cannot
// carry an Authorization header).
function itemImage(itemId, alt) {
  const img = el("img", { alt: alt || "", loading: "lazy", decoding: "async" });
  const url = "/items/" + encodeURIComponent(itemId) + "/stream";
  if (!token()) {
    img.src = url;
  } else {
    fetch(url, { headers: { Authorization: "Bearer " + token() } })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(r.statusText))))
      .then((b) => { img.src = URL.createObjectURL(b); })
      .catch(() => { img.alt = "(image unavailable) " + (alt || ""); });
  }
  return img;
}

// ---------------------------------------------------------------- search

function readFileAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error || new Error("could not read the file"));
    r.readAsDataURL(file);
  });
}

function selectedModels() {
  const a = $("#model-a").value;
  const list = a ? [a] : [];
  if ($("#compare").checked && $("#model-b").value && $("#model-b").value !== a) {
    list.push($("#model-b").value);
  }
  return list;
}

function commonQuery() {
  const q = { k: Math.max(1, Math.min(100, parseInt($("#k").value, 10) || 12)) };
  const ds = $("#dataset").value;
  if (ds) q.dataset_id = ds;
  const f = $("#filter").value.trim();
  if (f) {
    let parsed;
    try { parsed = JSON.parse(f); } catch (e) { throw new Error("the DQL filter is not JSON: " + e.message); }
    q.filter = parsed;
  }
  return q;
}

function saveUrl(text) {
  const p = new URLSearchParams();
  if (text) p.set("q", text);
  if ($("#model-a").value) p.set("model", $("#model-a").value);
  if ($("#compare").checked && $("#model-b").value) p.set("model_b", $("#model-b").value);
  if ($("#dataset").value) p.set("dataset", $("#dataset").value);
  if ($("#k").value !== "12") p.set("k", $("#k").value);
  if ($("#filter").value.trim()) p.set("filter", $("#filter").value.trim());
  const s = p.toString();
  history.replaceState(null, "", "/" + (s ? "?" + s : ""));
}

async function runSearch(query, describe) {
  const status = $("#status");
  const ids = selectedModels();
  if (!ids.length) {
    status.textContent = "No model to search with: embed a dataset first.";
    status.className = "error";
    setState("error");
    return;
  }
  let common;
  try { common = commonQuery(); } catch (e) {
    status.textContent = e.message; status.className = "error"; setState("error"); return;
  }
  status.className = "";
  status.textContent = "Searching " + describe + "…";
  setState("searching");
  $("#search-button").disabled = true;
  const started = performance.now();
  const answers = await Promise.all(ids.map((id) =>
    api("/search", { method: "POST", body: JSON.stringify(Object.assign({ model_id: id }, common, query)) })
      .then((r) => ({ id, r }), (e) => ({ id, e }))));
  $("#search-button").disabled = false;
  const results = $("#results");
  results.replaceChildren(...answers.map(renderColumn));
  const failed = answers.filter((a) => a.e);
  const took = Math.round(performance.now() - started);
  if (failed.length === answers.length) {
    status.textContent = "Search failed: " + failed[0].e.message;
    status.className = "error";
    setState("error");
  } else {
    const n = answers.filter((a) => a.r).map((a) => a.r.results.length);
    status.textContent = n.join(" and ") + " results for " + describe + " in " + took + " ms";
    setState("done");
  }
}

function renderColumn(answer) {
  const m = models.find((x) => x.id === answer.id);
  const name = m ? m.name : answer.id;
  const head = el("h3", {}, [name + " ", answer.r ? el("small", { text: answer.r.timing.total_ms.toFixed(0) + " ms" }) : null]);
  const col = el("section", { class: "column", "aria-label": "Results of " + name, dataset: { modelId: answer.id } }, [head]);
  if (answer.e) {
    col.append(el("p", { class: "error", role: "alert", text: answer.e.message }));
    return col;
  }
  if (!answer.r.results.length) {
    col.append(el("p", { text: "No matches." }));
    return col;
  }
  const list = el("ol", { class: "grid" });
  for (const h of answer.r.results) list.append(renderHit(h));
  col.append(list);
  return col;
}

function renderHit(h) {
  const score = h.score.toFixed(3);
  const label = (h.name || h.item_id) + (h.caption ? ": " + h.caption : "");
  const picture = h.image_item_id
    ? itemImage(h.image_item_id, h.caption || h.name || "")
    : el("div", { class: "noimage", text: h.caption || h.kind || "no image" });
  const button = el("button", {
    type: "button",
    title: "Search for items like this one",
    "aria-label": "Result " + h.rank + ", score " + score + ", " + label + ". Press Enter for similar items.",
    onclick: () => runSearch({ item_id: h.item_id }, "items like " + (h.name || h.item_id)),
  }, [
    picture,
    el("span", { class: "score", text: score }),
    el("span", { class: "name", text: h.name || h.item_id }),
    h.caption ? el("span", { class: "caption", text: h.caption }) : null,
  ]);
  return el("li", { class: "hit", dataset: { itemId: h.item_id, score: String(h.score) } }, [button]);
}

async function onSubmit(ev) {
  ev.preventDefault();
  const file = $("#image").files[0];
  const text = $("#q").value.trim();
  if (file) {
    let data;
    try { data = await readFileAsDataURL(file); } catch (e) {
      $("#status").textContent = e.message; $("#status").className = "error"; return;
    }
    saveUrl("");
    await runSearch({ image: data }, "the image " + file.name);
  } else if (text) {
    saveUrl(text);
    await runSearch({ text }, "“" + text + "”");
  } else {
    $("#status").textContent = "Type a text or choose an image.";
    $("#q").focus();
  }
}

function pickDefaults(params) {
  const searchable = models.filter((m) => m.feature_set_id);
  const list = searchable.length ? searchable : models;
  const a = params.get("model") || (searchable.find((m) => m.id === defaultModelId) || list[0] || {}).id;
  const am = models.find((m) => m.id === a);
  let b = params.get("model_b");
  if (!b && am && am.base_model_id && searchable.some((m) => m.id === am.base_model_id)) b = am.base_model_id;
  if (!b) b = (list.find((m) => m.id !== a) || {}).id;
  fillModelSelect($("#model-a"), list, a);
  fillModelSelect($("#model-b"), list, b);
  $("#compare").checked = !!params.get("model_b");
  $("#model-b").disabled = !$("#compare").checked;
}

async function initSearch() {
  const params = new URLSearchParams(location.search);
  $("#q").value = params.get("q") || "";
  if (params.get("k")) $("#k").value = params.get("k");
  if (params.get("filter")) $("#filter").value = params.get("filter");
  try {
    const [list, datasets] = await Promise.all([api("/models"), api("/datasets")]);
    models = list.models;
    defaultModelId = list.default_model_id;
    pickDefaults(params);
    for (const d of datasets) {
      $("#dataset").append(el("option", { value: d.id, selected: d.id === params.get("dataset") || d.name === params.get("dataset"), text: d.name + " (" + d.items_count + ")" }));
    }
  } catch (e) {
    $("#status").textContent = "Could not load models: " + e.message;
    $("#status").className = "error";
    setState("error");
    return;
  }
  $("#search-form").addEventListener("submit", onSubmit);
  $("#compare").addEventListener("change", () => { $("#model-b").disabled = !$("#compare").checked; });
  $("#image").addEventListener("change", () => { if ($("#image").files[0]) $("#q").value = ""; });
  $("#q").addEventListener("input", () => { if ($("#q").value) $("#image").value = ""; });
  setState("ready");
  $("#q").focus();
  if ($("#q").value.trim()) $("#search-form").requestSubmit();
}

// ---------------------------------------------------------------- training

function niceTicks(min, max, n) {
  if (min === max) { min -= 1; max += 1; }
  const step0 = (max - min) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((s) => s * mag).find((s) => s >= step0);
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function chart(figure, series) {
  const W = 480, H = 260, L = 48, R = 12, T = 12, B = 34;
  const pts = series.flatMap((s) => s.points);
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (/recall|accuracy/.test(figure)) { y0 = Math.min(0, y0); y1 = Math.max(y1, Math.min(1, y1 * 1.1 || 1)); }
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": figure + " by epoch: " + series.map((s) => s.legend).join(", ") });
  for (const t of niceTicks(y0, y1, 5)) {
    g.append(svg("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
    g.append(svg("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end", text: String(+t.toFixed(4)) }));
  }
  const integerX = xs.every(Number.isInteger);
  for (const t of niceTicks(x0, x1, 6).filter((t) => !integerX || Number.isInteger(t))) {
    g.append(svg("text", { x: sx(t), y: H - B + 16, "text-anchor": "middle", text: String(t) }));
  }
  g.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  g.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  g.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", text: "epoch" }));
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p.x).toFixed(1) + " " + sy(p.y).toFixed(1)).join(" ");
    g.append(svg("path", { d, fill: "none", stroke: c, "stroke-width": 2 }));
    for (const p of s.points) {
      g.append(svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, fill: c }, [svg("title", { text: `${s.legend} epoch ${p.x}: ${p.y.toFixed(4)}` })]));
    }
  });
  const legend = el("div", { class: "legend" }, series.map((s, i) => {
    const span = el("span", { text: s.legend });
    span.style.setProperty("--c", COLORS[i % COLORS.length]);
    return span;
  }));
  const epochs = [...new Set(pts.map((p) => p.x))].sort((a, b) => a - b);
  const table = el("table", {}, [
    el("thead", {}, el("tr", {}, [el("th", { text: "epoch" }), ...series.map((s) => el("th", { text: s.legend }))])),
    el("tbody", {}, epochs.map((x) => el("tr", {}, [
      el("td", { text: String(x) }),
      ...series.map((s) => { const p = s.points.find((q) => q.x === x); return el("td", { text: p ? p.y.toFixed(4) : "" }); }),
    ]))),
  ]);
  return el("section", { class: "chart", dataset: { figure } }, [
    el("h3", { text: figure }),
    el("figure", {}, [g, legend]),
    el("details", {}, [el("summary", { text: "Values" }), table]),
  ]);
}

function summary(model, training) {
  const rows = [["model", model.name + " (" + model.id + ")"], ["status", model.status]];
  if (training && typeof training === "object") {
    for (const [k, v] of Object.entries(training)) {
      if (v === null || typeof v === "object") continue;
      rows.push([k.replace(/_/g, " "), typeof v === "number" ? String(+v.toFixed(4)) : String(v)]);
    }
    if (training.final_metrics && typeof training.final_metrics === "object") {
      for (const [k, v] of Object.entries(training.final_metrics)) {
        if (typeof v === "number") rows.push(["final " + k.replace(/_/g, " "), String(+v.toFixed(4))]);
      }
    }
  }
  return el("dl", {}, rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

async function showTraining(id) {
  const status = $("#train-status");
  status.className = "";
  status.textContent = "Loading…";
  setState("loading");
  let data;
  try { data = await api("/models/" + encodeURIComponent(id) + "/metrics"); } catch (e) {
    status.textContent = e.message; status.className = "error"; setState("error"); return;
  }
  history.replaceState(null, "", "/training?model=" + encodeURIComponent(id));
  $("#train-summary").replaceChildren(summary(data.model, data.training));
  const figures = new Map();
  for (const s of data.samples) {
    if (!figures.has(s.figure)) figures.set(s.figure, new Map());
    const legends = figures.get(s.figure);
    if (!legends.has(s.legend)) legends.set(s.legend, []);
    legends.get(s.legend).push({ x: s.data.x, y: s.data.y });
  }
  const charts = [];
  for (const [figure, legends] of figures) {
    const series = [...legends].map(([legend, points]) => ({ legend, points: points.sort((a, b) => a.x - b.x) }));
    charts.push(chart(figure, series));
  }
  $("#charts").replaceChildren(...charts);
  status.textContent = charts.length
    ? data.samples.length + " metric samples over " + charts.length + " figures"
    : "This model has no training metrics (it was not trained with cliptune).";
  setState("done");
}

async function initTraining() {
  const params = new URLSearchParams(location.search);
  try {
    const list = await api("/models");
    models = list.models;
    const trained = models.filter((m) => m.base_model_id || m.status === "trained");
    const pick = params.get("model") || (trained[0] || models.find((m) => m.id === list.default_model_id) || models[0] || {}).id;
    fillModelSelect($("#train-model"), models, pick);
    $("#train-model").addEventListener("change", () => showTraining($("#train-model").value));
    if (pick) await showTraining(pick);
    else { $("#train-status").textContent = "No models yet."; setState("done"); }
  } catch (e) {
    $("#train-status").textContent = "Could not load models: " + e.message;
    $("#train-status").className = "error";
    setState("error");
  }
}

// ---------------------------------------------------------------- start

function init() {
  $("#token-button").addEventListener("click", openTokenDialog);
  $("#token-dialog").addEventListener("close", () => {
    if ($("#token-dialog").returnValue === "save") {
      const t = $("#token").value.trim();
      if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
      location.reload();
    }
  });
  document.addEventListener("keydown", (ev) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement && document.activeElement.tagName);
    if (ev.key === "/" && !typing && !$("#search-view").hidden) {
      ev.preventDefault();
      $("#q").focus();
    }
  });
  const training = location.pathname === "/training";
  $("#search-view").hidden = training;
  $("#training-view").hidden = !training;
  $(training ? "#nav-training" : "#nav-search").setAttribute("aria-current", "page");
  document.title = training ? "Training · cliptune" : "Search · cliptune";
  if (training) initTraining(); else initSearch();
}

init();
