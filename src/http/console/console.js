// The gauntlet console: reads the admin API and nothing else, renders every value from outside as
// text (textContent, never markup), and refreshes on its own. No library, no other origin: the
// Content-Security-Policy on /ui/ allows only this file's own requests.
"use strict";

const REFRESH_MS = 2000;
const HISTORY = 20000; // points kept per series: the server's history, a week a minute by default
const COLORS = ["#2457c5", "#c2410c", "#15803d", "#7e22ce", "#0e7490", "#a16207"];

const state = {
  token: sessionStorage.getItem("gauntlet-token") || "",
  models: [],
  selected: null,
  series: {}, // model -> { t: [], lines: { key: [values] }, last: "at" of the newest history point }
  search: {}, // model -> { filter, answer }: the repository's versions, searched on demand
  busy: false,
};

// ---- DOM, as text only ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 4) {
  if (value === undefined || value === null) return "–";
  if (typeof value !== "number") return String(value);
  if (value !== 0 && Math.abs(value) < 1e-4) return value.toExponential(1);
  return value.toFixed(digits);
}

function status(text, error = false) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.classList.toggle("error", error);
}

// ---- the admin API ----

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  // No token, a wrong one, or one without the scope: the form, beside the API's message naming the scope.
  if (response.status === 401 || response.status === 403) document.getElementById("token-form").hidden = false;
  return { ok: response.ok, status: response.status, data };
}

function message(answer) {
  return (answer.data && answer.data.error) || `HTTP ${answer.status}`;
}

// ---- the comparison's history, from the server, and where it stands now ----

/// The history points taken since the newest one the page has (all of them when it opens).
async function readHistory(model) {
  const series = state.series[model] || (state.series[model] = { t: [], lines: {}, last: null });
  const since = series.last ? `?since=${encodeURIComponent(series.last)}` : "";
  const answer = await api("GET", `/admin/models/${encodeURIComponent(model)}/history${since}`);
  if (!answer.ok) return;
  for (const point of answer.data.points) {
    if (series.last && point.at <= series.last) continue;
    remember(series, point);
    series.last = point.at;
  }
}

/// A point as the history has it, from the live comparison: where the lines end now.
function pointOf(comparison) {
  const estimated = (v) => (comparison.models.find((m) => m.version === v) || {}).estimated_accuracy;
  const pairs = comparison.pairs.map((p) => ({ ...p, champion_estimated: estimated(p.champion), challenger_estimated: estimated(p.challenger) }));
  return { at: new Date().toISOString(), pairs };
}

/// Adds one point (history-shaped: per pair, both metrics, improvement and interval, coverage).
function remember(series, point) {
  series.t.push(Date.parse(point.at));
  const put = (key, value) => {
    const line = series.lines[key] || (series.lines[key] = []);
    while (line.length < series.t.length - 1) line.push(null);
    line.push(value === undefined ? null : value);
  };
  // Each version's metric on its pairs' labelled rows: the champion's from its first pair.
  const seen = new Set();
  for (const p of point.pairs) {
    for (const [version, value, estimated] of [[p.champion, p.champion_metric, p.champion_estimated], [p.challenger, p.challenger_metric, p.challenger_estimated]]) {
      if (seen.has(version)) continue;
      seen.add(version);
      put(`metric ${version}`, value);
      if (estimated !== undefined && estimated !== null) put(`estimated ${version}`, estimated);
      // Accuracy's 95% Wilson interval over the labelled pairs (MAE has none here).
      const [low, high] = series.accuracy ? wilson(value, p.labelled_pairs) : [null, null];
      put(`mlow ${version}`, low);
      put(`mhigh ${version}`, high);
    }
  }
  for (const p of point.pairs) {
    const key = `${p.champion}→${p.challenger}`;
    put(`improvement ${key}`, p.improvement);
    put(`low ${key}`, p.improvement_ci ? p.improvement_ci[0] : null);
    put(`high ${key}`, p.improvement_ci ? p.improvement_ci[1] : null);
    put(`coverage ${key}`, p.coverage);
  }
  if (series.t.length > HISTORY) {
    series.t.shift();
    for (const line of Object.values(series.lines)) line.shift();
  }
}

function wilson(p, n) {
  if (p === undefined || p === null || !n) return [null, null];
  const z = 1.959964, z2 = z * z;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = (z / (1 + z2 / n)) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  return [centre - half, centre + half];
}

// ---- charts (inline SVG) ----

function lineChart(title, lines, { bands = [], yLabel = "", rule = null } = {}) {
  const width = 560, height = 200, left = 52, right = 8, top = 10, bottom = 24;
  const values = [...lines.flatMap((l) => l.values), ...bands.flatMap((b) => [...b.low, ...b.high])]
    .filter((v) => v !== null && Number.isFinite(v));
  if (rule !== null) values.push(rule);
  const n = Math.max(...lines.map((l) => l.values.length), 1);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  if (values.length === 0) {
    chart.append(svg("text", { x: left, y: height / 2 }, "no data yet"));
    return figure(title, chart, lines);
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const x = (i) => left + (n <= 1 ? 0 : (i / (n - 1)) * (width - left - right));
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom);
  chart.append(svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, stroke: "#d8dde6" }));
  for (const v of [lo, (lo + hi) / 2, hi]) chart.append(svg("text", { x: 2, y: y(v) + 4 }, fmt(v, 3)));
  chart.setAttribute("data-points", String(n));
  chart.append(svg("text", { x: left, y: height - 6 }, `${yLabel}: ${n} points, the history's and now`));
  if (rule !== null) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(rule), y2: y(rule), stroke: "#888", "stroke-dasharray": "4 3" }));
  }
  bands.forEach((band, b) => {
    const upper = [], lower = [];
    band.high.forEach((v, i) => { if (v !== null && band.low[i] !== null) { upper.push(`${x(i)},${y(v)}`); lower.unshift(`${x(i)},${y(band.low[i])}`); } });
    if (upper.length) chart.append(svg("polygon", { points: [...upper, ...lower].join(" "), fill: COLORS[b % COLORS.length], "fill-opacity": 0.15 }));
  });
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    const points = line.values.map((v, j) => (v === null ? null : [x(j), y(v)])).filter(Boolean);
    if (points.length > 1) chart.append(svg("polyline", { points: points.map((p) => p.join(",")).join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    // The latest value as a dot, so one refresh already shows where each line stands.
    if (points.length) { const [px, py] = points[points.length - 1]; chart.append(svg("circle", { cx: px, cy: py, r: 3.5, fill: color })); }
  });
  return figure(title, chart, lines);
}

function barChart(title, bars, { rules = [], unit = "" } = {}) {
  const width = 560, rowHeight = 18, left = 150, right = 60;
  const height = Math.max(bars.length, 1) * rowHeight + 26;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  const max = Math.max(...bars.map((b) => b.value || 0), ...rules.map((r) => r.value), 1e-9);
  const x = (v) => left + (v / max) * (width - left - right);
  bars.forEach((bar, i) => {
    const y0 = 4 + i * rowHeight;
    chart.append(svg("text", { x: 2, y: y0 + 12 }, bar.label));
    chart.append(svg("rect", { x: left, y: y0 + 2, width: Math.max(0, x(bar.value || 0) - left), height: rowHeight - 6, fill: bar.color || COLORS[0] }));
    const shown = Number.isInteger(bar.value) ? String(bar.value) : fmt(bar.value, 3);
    chart.append(svg("text", { x: x(bar.value || 0) + 4, y: y0 + 12 }, `${shown}${unit}`));
  });
  for (const rule of rules) {
    chart.append(svg("line", { x1: x(rule.value), x2: x(rule.value), y1: 0, y2: height - 20, stroke: rule.color, "stroke-dasharray": "4 3" }));
    chart.append(svg("text", { x: x(rule.value) - 20, y: height - 6 }, `${rule.label} ${rule.value}`));
  }
  return figure(title, chart, []);
}

/// Each slice's improvement as a point with its 95% interval, against the line of no difference.
function intervalChart(title, items) {
  const width = 560, rowHeight = 20, left = 150, right = 16;
  const height = Math.max(items.length, 1) * rowHeight + 26;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  const values = items.flatMap((i) => [i.low, i.high, i.value]).filter((v) => v !== null && v !== undefined);
  const span = Math.max(...values.map(Math.abs), 1e-6);
  const x = (v) => left + ((v + span) / (2 * span)) * (width - left - right);
  items.forEach((item, i) => {
    const y = 4 + i * rowHeight + rowHeight / 2;
    const color = item.flagged ? "#b3261e" : item.verdict === "better" ? "#1c7c3a" : COLORS[0];
    chart.append(svg("text", { x: 2, y: y + 4 }, item.label));
    if (item.low !== null && item.high !== null) {
      chart.append(svg("line", { x1: x(item.low), x2: x(item.high), y1: y, y2: y, stroke: color, "stroke-width": 2 }));
    }
    if (item.value !== null) chart.append(svg("circle", { cx: x(item.value), cy: y, r: 4, fill: color }));
  });
  chart.append(svg("line", { x1: x(0), x2: x(0), y1: 0, y2: height - 20, stroke: "#5b6475", "stroke-dasharray": "4 3" }));
  chart.append(svg("text", { x: x(0) - 40, y: height - 6 }, "no difference"));
  chart.append(svg("text", { x: left, y: height - 6 }, fmt(-span, 3)));
  chart.append(svg("text", { x: width - right - 40, y: height - 6 }, fmt(span, 3)));
  return figure(title, chart, []);
}

function figure(title, chart, lines) {
  // Colours through the CSSOM: the CSP allows no inline style attribute.
  const legend = el("p", { class: "legend" }, lines.map((l, i) => {
    const item = el("span", {}, `■ ${l.name}`);
    item.style.color = COLORS[i % COLORS.length];
    return item;
  }));
  return el("figure", {}, el("figcaption", {}, el("h3", {}, title)), chart, lines.length ? legend : null);
}

// ---- views ----

function deploymentView(model) {
  const rows = model.versions.map((v) =>
    el("tr", {}, el("td", {}, v.version), el("td", {}, v.state), el("td", {}, v.backend || "–"),
      el("td", {}, v.one_row_us === undefined ? "–" : `${fmt(v.one_row_us, 1)} µs`),
      el("td", { class: "long" }, v.description || v.error || "")));
  return el("section", { class: "wide", "aria-labelledby": "deployment-title" },
    el("h2", { id: "deployment-title" }, `${model.name}: champion ${model.champion}`),
    el("p", {}, `Challengers: ${model.challengers.join(", ") || "none"} · sampling ${fmt(model.shadow_sample_rate, 2)}`,
      model.canary ? ` · canary ${model.canary.version} at ${fmt(model.canary.share, 2)}` : "",
      ` · rollback history: ${model.previous.join(" → ") || "none"}`),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ["version", "state", "backend", "one row", "description"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows))),
    actionsView(model));
}

// ---- the repository: every version, its lineage and state, filtered ----

async function searchVersions(name, filter) {
  const query = new URLSearchParams({ model: name, q: filter });
  const answer = await api("GET", `/admin/repository?${query}`);
  state.search[name] = { filter, answer, draft: undefined };
}

function repositoryView(name) {
  const search = state.search[name] || { filter: "", answer: null };
  // What is typed and not yet searched survives the page's refreshes.
  const input = el("input", { id: "repository-filter", type: "search", value: search.draft ?? search.filter,
    placeholder: "holdout_metrics.accuracy > 0.96 and state = available", "aria-describedby": "repository-help",
    oninput: () => { search.draft = input.value; state.search[name] = search; } });
  const form = el("form", { id: "repository-form", onsubmit: async (event) => {
    event.preventDefault();
    await searchVersions(name, input.value.trim());
    await refresh(true);
  } }, el("label", { for: "repository-filter" }, "Filter "), input, " ", el("button", { type: "submit" }, "Search"));
  const help = el("p", { id: "repository-help", class: "muted" },
    "field op value, joined by and; fields are the manifest's keys, dotted (training.data_sha256), and state, created, run_id, aliases, tags.<key>; op: = != < <= > >= ~ (contains).");
  const answer = search.answer;
  let body;
  if (!answer) body = el("p", { class: "muted" }, "Searching…");
  else if (!answer.ok) body = el("p", { class: "result error", id: "repository-error", role: "alert" }, `Refused (${answer.status}): ${message(answer)}`);
  else {
    const rows = answer.data.versions.map((v) => {
      const metrics = Object.entries(v.holdout_metrics || {}).map(([k, x]) => `${k} ${fmt(x)}`).join(", ");
      const training = v.training || {};
      const lineage = [training.data_sha256 ? `data ${training.data_sha256.slice(0, 12)}` : null,
        training.split && training.split.holdout_sha256 ? `holdout ${training.split.holdout_sha256.slice(0, 12)}` : null,
        v.run_id ? `run ${v.run_id}` : null, (v.aliases || []).length ? `aliases ${v.aliases.join(", ")}` : null].filter(Boolean).join(" · ");
      return el("tr", { "data-version": v.version }, el("td", {}, v.version), el("td", { "data-field": "state" }, v.state),
        el("td", { class: "long" }, v.error ? `refused: ${v.error}` : (v.description || "")), el("td", {}, metrics),
        el("td", { "data-field": "lineage" }, lineage), el("td", {}, v.created || "–"));
    });
    body = el("div", { class: "scroll" },
      el("p", { class: "muted" }, `${answer.data.versions.length} of ${answer.data.searched} versions in ${answer.data.repository} (${answer.data.kind})`),
      el("table", { id: "repository-versions" },
        el("thead", {}, el("tr", {}, ["version", "state", "description", "holdout metrics", "lineage", "created"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows)));
  }
  return el("section", { class: "wide", "aria-labelledby": "repository-title" },
    el("h2", { id: "repository-title" }, "Versions in the repository"), form, help, body);
}

function actionsView(model) {
  const result = el("p", { class: "result", id: "action-result", role: "status", "aria-live": "polite" });
  const promote = model.challengers.map((version) =>
    el("button", { type: "button", "data-action": "promote", "data-version": version,
      onclick: () => change(model, "promote", { version }, `Promote version ${version} to champion of ${model.name}?`, result) },
      `Promote ${version}`));
  const rollback = el("button", { type: "button", "data-action": "rollback", disabled: model.previous.length === 0 ? true : undefined,
    onclick: () => change(model, "rollback", {}, `Roll ${model.name} back to version ${model.previous[model.previous.length - 1]}?`, result) },
    "Roll back");
  const loaded = model.versions.filter((v) => v.version !== model.champion && ["challenger", "loaded", "on_disk", "refused"].includes(v.state));
  const boxes = loaded.map((v) => el("label", {}, el("input", { type: "checkbox", name: "challenger", value: v.version,
    checked: model.challengers.includes(v.version) ? true : undefined }), ` ${v.version} `));
  const rate = el("input", { id: "sampling", type: "number", min: 0, max: 1, step: 0.05, value: model.shadow_sample_rate });
  const form = el("form", { id: "challengers-form", onsubmit: (event) => {
    event.preventDefault();
    const versions = [...form.querySelectorAll("input[name=challenger]:checked")].map((b) => b.value);
    change(model, "challengers", { versions, shadow_sample_rate: Number(rate.value) },
      `Set ${model.name}'s challengers to [${versions.join(", ")}] at sampling ${rate.value}?`, result);
  } }, el("fieldset", {}, el("legend", {}, "Challengers and sampling"), boxes,
    el("label", { for: "sampling" }, " sampling "), rate, " ", el("button", { type: "submit" }, "Apply")));
  return el("div", {}, el("h3", {}, "Actions"), el("div", { class: "actions" }, promote, rollback), form, result);
}

function comparisonView(comparison) {
  if (!comparison) return el("section", {}, el("h2", {}, "Comparison"), el("p", { class: "muted" }, "No comparison yet."));
  const metric = comparison.task === "classification" ? "accuracy" : "mae";
  const versions = comparison.models.map((m) =>
    el("tr", { "data-version": m.version }, el("td", {}, m.version), el("td", {}, m.records), el("td", {}, m.labelled_rows), el("td", {}, fmt(m[metric])),
      el("td", { "data-field": "estimated", title: m.estimate_calibration || "" },
        m.estimated_accuracy === undefined ? "–" : `${fmt(m.estimated_accuracy)} (labelled: ${fmt(m.estimated_accuracy_labelled)}, error ${fmt(m.estimate_error)})`),
      el("td", {}, fmt(m.latency_p50_ms, 3)), el("td", {}, fmt(m.latency_p99_ms, 3)),
      el("td", {}, `${m.errors + m.panics + m.timeouts} / ${m.shed}`)));
  const pairs = comparison.pairs.map((p) =>
    el("tr", { "data-pair": `${p.champion}-${p.challenger}` },
      el("td", {}, `${p.champion} vs ${p.challenger}`),
      el("td", { "data-field": "labelled_pairs" }, p.labelled_pairs),
      el("td", { "data-field": "metrics" }, `${fmt(p.champion_metric)} vs ${fmt(p.challenger_metric)}`),
      el("td", { "data-field": "improvement" }, `${fmt(p.improvement)}`,
        p.improvement_ci ? ` [${fmt(p.improvement_ci[0])}, ${fmt(p.improvement_ci[1])}]` : ""),
      el("td", { "data-field": "agreement" }, fmt(p.agreement)),
      el("td", {}, `${fmt(p.divergence)} ${p.divergence_measure}`),
      el("td", { "data-field": "p_value" }, `${p.test} ${fmt(p.p_value)} (adj. ${fmt(p.adjusted_p_value)})`),
      el("td", { "data-field": "sequential_p_value" }, `${fmt(p.sequential_p_value)} (adj. ${fmt(p.adjusted_sequential_p_value)})`),
      el("td", { "data-field": "verdict", class: `verdict-${p.verdict}` }, p.verdict.replaceAll("_", " "),
        p.more_pairs_needed ? ` (about ${p.more_pairs_needed} more pairs)` : ""),
      el("td", { "data-field": "coverage" }, fmt(p.coverage))));
  return el("section", { class: "wide", "aria-labelledby": "comparison-title" },
    el("h2", { id: "comparison-title" }, `Comparison: ${comparison.records} paired records, ${comparison.labelled_records} labelled`),
    el("p", { class: "muted" }, `alpha ${comparison.alpha}: ${comparison.correction || ""}`),
    el("div", { class: "scroll" }, el("table", { id: "versions" },
      el("thead", {}, el("tr", {}, ["version", "records", "labelled", metric, "estimated without labels (CBPE)", "p50 ms", "p99 ms", "failed / shed"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, versions))),
    el("div", { class: "scroll" }, el("table", { id: "pairs" },
      el("thead", {}, el("tr", {}, ["pair", "labelled", metric, "improvement [95% CI]", "agreement", "divergence", "paired test p", "sequential p", "verdict", "coverage"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, pairs))),
    slicesView(comparison, metric));
}

/// Each pair's slices: where a challenger better on average is worse for one group.
function slicesView(comparison, metric) {
  const pairs = comparison.pairs.filter((p) => (p.slices || []).length > 0);
  if (pairs.length === 0) return null;
  const warnings = pairs.filter((p) => (p.worse_slices || []).length > 0).map((p) =>
    el("p", { class: "result error", role: "alert", "data-worse": `${p.champion}-${p.challenger}` },
      `Challenger ${p.challenger} is better overall but significantly worse on: ${p.worse_slices.join(", ")}`));
  const rows = pairs.flatMap((p) => p.slices.map((s) =>
    el("tr", { "data-pair": `${p.champion}-${p.challenger}`, "data-slice": s.slice, class: s.flagged ? "flagged" : undefined },
      el("td", {}, `${p.champion} vs ${p.challenger}`), el("td", {}, s.slice), el("td", { "data-field": "labelled_pairs" }, s.labelled_pairs),
      el("td", {}, `${fmt(s.champion_metric)} vs ${fmt(s.challenger_metric)}`),
      el("td", { "data-field": "improvement" }, fmt(s.improvement), s.improvement_ci ? ` [${fmt(s.improvement_ci[0])}, ${fmt(s.improvement_ci[1])}]` : ""),
      el("td", {}, `${fmt(s.p_value)} (adj. ${fmt(s.adjusted_p_value)})`),
      el("td", { "data-field": "verdict", class: `verdict-${s.verdict}` }, s.verdict.replaceAll("_", " "), s.flagged ? " (better overall)" : ""))));
  const charts = pairs.map((p) => intervalChart(`${p.champion} vs ${p.challenger}: improvement per slice, with its 95% interval`,
    p.slices.map((s) => ({ label: s.slice, value: s.improvement ?? null, low: s.improvement_ci ? s.improvement_ci[0] : null,
      high: s.improvement_ci ? s.improvement_ci[1] : null, verdict: s.verdict, flagged: s.flagged }))));
  return el("div", { id: "slices-view" }, el("h3", {}, "By slice"), warnings,
    el("div", { class: "scroll" }, el("table", { id: "slices" },
      el("thead", {}, el("tr", {}, ["pair", "slice", "labelled", metric, "improvement [95% CI]", "p (Holm-adjusted)", "verdict"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows))),
    el("div", { class: "charts" }, charts));
}

function chartsView(name, comparison, drift) {
  const kept = state.series[name] || { t: [], lines: {} };
  // The history's lines, then where each stands now (not kept: the next history point will be).
  const series = { t: [...kept.t], lines: Object.fromEntries(Object.entries(kept.lines).map(([k, v]) => [k, [...v]])),
    accuracy: !comparison || comparison.task === "classification" };
  if (comparison) remember(series, pointOf(comparison));
  const pick = (prefix) => Object.entries(series.lines).filter(([k]) => k.startsWith(prefix)).map(([k, v]) => ({ name: k.slice(prefix.length), values: v }));
  const metric = comparison && comparison.task === "regression" ? "MAE" : "accuracy";
  const improvements = pick("improvement ");
  const bands = improvements.map((l) => ({ low: series.lines[`low ${l.name}`] || [], high: series.lines[`high ${l.name}`] || [] }));
  const metrics = pick("metric ");
  const metricBands = metrics.map((l) => ({ low: series.lines[`mlow ${l.name}`] || [], high: series.lines[`mhigh ${l.name}`] || [] }));
  const charts = [
    lineChart(`${metric} of each version${metric === "accuracy" ? ", with its 95% interval" : ""}`, metrics, { bands: metricBands, yLabel: metric }),
    lineChart("challenger's improvement, with its 95% interval", improvements, { bands, yLabel: "improvement", rule: 0 }),
    lineChart("coverage of each pair", pick("coverage "), { yLabel: "coverage" }),
    ...(pick("estimated ").length ? [lineChart("accuracy estimated without labels (CBPE), each version", pick("estimated "), { yLabel: "estimated accuracy" })] : []),
  ];
  if (comparison) {
    for (const m of comparison.models) {
      const buckets = (m.latency_histogram_ms || []).filter(([, count]) => count > 0);
      charts.push(barChart(`latency of version ${m.version} (results per bucket)`,
        buckets.map(([upper, count]) => ({ label: `≤ ${fmt(upper, 3)} ms`, value: count }))));
    }
  }
  if (drift && (!drift.windows || drift.windows.every((w) => !w.judged))) {
    charts.push(el("figure", {}, el("figcaption", {}, el("h3", {}, "drift")),
      el("p", { class: "muted" }, `Not judged yet: ${drift.rows_seen} of the ${drift.min_rows} rows a window needs.`)));
  }
  if (drift && drift.windows) {
    for (const window of drift.windows.filter((w) => w.judged)) {
      const bars = window.series.map((s) => ({ label: s.name, value: s.psi,
        color: s.level === "alert" ? "#b3261e" : s.level === "warn" ? "#a86400" : COLORS[0] }));
      charts.push(barChart(`drift (PSI), ${window.window} window, ${window.rows} rows: ${drift.state.replaceAll("_", " ")}`, bars, {
        rules: [{ value: drift.thresholds.psi_warn, label: "warn", color: "#a86400" }, { value: drift.thresholds.psi_alert, label: "alert", color: "#b3261e" }],
      }));
    }
  }
  return el("section", { class: "wide", "aria-labelledby": "charts-title" }, el("h2", { id: "charts-title" }, "Pictures"),
    el("p", { class: "muted" }, "Lines: the comparison's history (a point every history_interval_s while labels join, kept by the server), then where it stands now."),
    el("div", { class: "charts" }, charts));
}

function auditView(audit) {
  const entries = (audit && audit.entries) || [];
  const rows = entries.map((e) => el("tr", {}, el("td", {}, e.timestamp), el("td", {}, e.action), el("td", {}, e.version || ""),
    el("td", {}, e.actor), el("td", { class: "long" }, e.result, e.error ? `: ${e.error}` : ""),
    el("td", { class: "long", "data-field": "reason" }, e.reason || "")));
  return el("section", { class: "wide", "aria-labelledby": "audit-title" }, el("h2", { id: "audit-title" }, "Audit log, newest first"),
    entries.length === 0 ? el("p", { class: "muted" }, "No change yet.") :
      el("div", { class: "scroll" }, el("table", { id: "audit" },
        el("thead", {}, el("tr", {}, ["when", "action", "version", "who", "result", "reason"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows))));
}

// ---- actions: a reason, a confirmation, then the API's answer ----

function confirmWithReason(title, text) {
  const dialog = document.getElementById("confirm");
  const reason = document.getElementById("reason");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  reason.value = "";
  return new Promise((resolve) => {
    const form = document.getElementById("confirm-form");
    const done = (value) => { form.onsubmit = null; document.getElementById("confirm-cancel").onclick = null; dialog.close(); resolve(value); };
    form.onsubmit = (event) => { event.preventDefault(); done(reason.value.trim() || null); };
    document.getElementById("confirm-cancel").onclick = () => done(null);
    dialog.addEventListener("cancel", () => resolve(null), { once: true });
    dialog.showModal();
    reason.focus();
  });
}

async function change(model, action, body, question, result) {
  const reason = await confirmWithReason(action === "challengers" ? "Change challengers" : action[0].toUpperCase() + action.slice(1), question);
  if (reason === null) return;
  const path = `/admin/models/${encodeURIComponent(model.name)}/${action}`;
  const answer = await api(action === "challengers" ? "PUT" : "POST", path, { ...body, reason });
  // The page may have refreshed while the dialog was open: write to the result line it shows now.
  result = document.getElementById("action-result") || result;
  result.classList.toggle("error", !answer.ok);
  result.classList.toggle("ok", answer.ok);
  result.textContent = answer.ok ? `Done: champion ${answer.data.champion}, challengers ${answer.data.challengers.join(", ") || "none"}.`
    : `Refused (${answer.status}): ${message(answer)}`;
  state.lastResult = { ok: answer.ok, text: result.textContent };
  await refresh(true);
}

// ---- the page ----

function renderNav() {
  const list = document.getElementById("models");
  list.replaceChildren(...state.models.map((m) => el("li", {}, el("button", {
    type: "button", "aria-current": m.name === state.selected ? "page" : undefined,
    onclick: () => { state.selected = m.name; location.hash = encodeURIComponent(m.name); refresh(true); },
  }, `${m.name} (champion ${m.champion})`))));
}

async function refresh(now = false) {
  if (state.busy && !now) return;
  state.busy = true;
  try {
    const list = await api("GET", "/admin/models");
    if (!list.ok) { status(`Cannot read the models: ${message(list)}`, true); return; }
    state.models = list.data;
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (!state.selected) state.selected = state.models.some((m) => m.name === wanted) ? wanted : (state.models[0] || {}).name;
    renderNav();
    const model = state.models.find((m) => m.name === state.selected);
    if (!model) return;
    const base = `/admin/models/${encodeURIComponent(model.name)}`;
    const [comparison, drift, audit] = await Promise.all([api("GET", `${base}/comparison`), api("GET", `${base}/drift`), api("GET", `${base}/audit?limit=50`)]);
    if (comparison.ok && state.series[model.name] === undefined) state.series[model.name] = { t: [], lines: {}, last: null };
    if (comparison.ok) state.series[model.name].accuracy = comparison.data.task === "classification";
    await readHistory(model.name);
    const focused = document.activeElement && document.activeElement.id;
    const previousResult = document.getElementById("action-result");
    const main = document.getElementById("main");
    const focusIsInDialog = document.getElementById("confirm").open;
    const keep = previousResult ? previousResult.cloneNode(true) : null;
    if (!state.search[model.name]) await searchVersions(model.name, "");
    main.replaceChildren(deploymentView(model), repositoryView(model.name), comparisonView(comparison.ok ? comparison.data : null),
      chartsView(model.name, comparison.ok ? comparison.data : null, drift.ok ? drift.data : null), auditView(audit.ok ? audit.data : null));
    if (keep) document.getElementById("action-result").replaceWith(keep);
    if (focused && !focusIsInDialog) {
      const node = document.getElementById(focused);
      if (node) node.focus();
      if (node && node.type === "search") node.setSelectionRange(node.value.length, node.value.length);
    }
    status(`Updated ${new Date().toLocaleTimeString()}`);
    if (!window.gauntletRenderedAt) {
      window.gauntletRenderedAt = performance.now();
      document.body.dataset.ready = "true";
    }
  } catch (error) {
    status(`The gateway did not answer: ${error.message}`, true);
  } finally {
    state.busy = false;
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = document.getElementById("token").value;
  sessionStorage.setItem("gauntlet-token", state.token);
  document.getElementById("token-form").hidden = true;
  refresh(true);
});

refresh(true);
setInterval(() => { if (!document.getElementById("confirm").open) refresh(); }, REFRESH_MS);
