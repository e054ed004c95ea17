// The dashboard: reads the REST API (same origin) and draws with plotly.js.
// Views: "#/" the overview (results, curves, sweeps, jobs), "#/jobs/ID" one job.
"use strict";

const REFERENCES = [  // bits per parameter: [slope, label]
  [2.0, "2 bits/param (perceptron)"],
  [2.3, "2.3 (thesis FCDNN)"],
  [3.0, "3.0 (thesis CNN conv)"],
  [3.7, "3.7 (thesis LSTM)"],
];
const KIND_COLORS = { fcdnn: "#1f77b4", cnn: "#d62728", lstm: "#2ca02c", gru: "#9467bd", rnn: "#ff7f0e" };
const REFRESH_MS = 2000;
const compared = new Set();  // job ids ticked for the comparison plot
let refreshTimer = null;

// -- fetching ---------------------------------------------------------------------------

async function api(path) {
  const headers = {};
  const key = localStorage.getItem("capacity-api-key");
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    document.getElementById("key-form").hidden = false;
    throw new Error("this server needs an API key for reads: enter it above");
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new Error(problem.detail || `${response.status} ${response.statusText}`);
  }
  return response.json();
}

function filterQuery() {
  const query = new URLSearchParams({ limit: "500" });
  for (const [field, id] of [["model_kind", "filter-kind"], ["min_params", "filter-min"], ["max_params", "filter-max"]]) {
    const value = document.getElementById(id).value.trim();
    if (value !== "") query.set(field, value);
  }
  return query.toString();
}

// -- small helpers ------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function showEmpty(plotId, emptyId, isEmpty) {
  document.getElementById(emptyId).hidden = !isEmpty;
  const plot = document.getElementById(plotId);
  plot.classList.toggle("hidden-plot", isEmpty);
  if (isEmpty) Plotly.purge(plot);
}

function draw(id, traces, layout) {
  const base = { margin: { t: 30, r: 70, b: 50, l: 70 }, legend: { orientation: "h", y: -0.2 } };
  return Plotly.react(id, traces, { ...base, ...layout }, { responsive: true, displaylogo: false });
}

function progressText(job) {
  const p = job.progress || {};
  const parts = [];
  if (p.stage) parts.push(p.stage);
  if (p.trials_done !== undefined) parts.push(`${p.trials_done} trials`);
  if (p.best_bits !== undefined) parts.push(`best I ${Number(p.best_bits).toFixed(1)}`);
  if (p.bits !== undefined) parts.push(`N ${p.n}, ${p.bits} bits`);
  return parts.join(", ");
}

function describeModel(model) {
  if (!model) return "";
  const m = { width: 32, depth: 1, kernel: 3, conv_layers: 3, channels: 8, hidden: 32, n_in: 32, steps: 5, ...model };
  if (m.kind === "fcdnn") return `FCDNN ${m.width}x${m.depth}`;
  if (m.kind === "cnn") return `CNN ${m.kernel}x${m.kernel}, ${m.conv_layers} conv x ${m.channels}`;
  return `${m.kind.toUpperCase()} ${m.hidden}, n_in ${m.n_in}, T ${m.steps}`;
}

// -- overview -------------------------------------------------------------------------------

function drawCapacityVsParams(items) {
  showEmpty("plot-capacity-params", "empty-capacity", items.length === 0);
  if (items.length === 0) return;
  const traces = [];
  const kinds = [...new Set(items.map((item) => item.model_kind))];
  const largest = Math.max(...items.map((item) => item.params));
  const smallest = Math.min(...items.map((item) => item.params));
  const span = [smallest / 1.5, largest * 1.5];
  for (const kind of kinds) {
    const own = items.filter((item) => item.model_kind === kind);
    traces.push({
      x: own.map((item) => item.params), y: own.map((item) => item.capacity_bits),
      text: own.map((item) => `job ${item.job_id}: ${fixed(item.bits_per_param, 2)} bits/param`),
      mode: "markers", type: "scatter", name: kind, marker: { size: 9, color: KIND_COLORS[kind] },
    });
    // least squares through the origin: C = b P, b = sum(C P) / sum(P^2)
    const slope = own.reduce((s, i) => s + i.capacity_bits * i.params, 0) / own.reduce((s, i) => s + i.params * i.params, 0);
    traces.push({
      x: span, y: span.map((p) => slope * p), mode: "lines", type: "scatter",
      name: `${kind} fit: ${slope.toFixed(2)} bits/param`, line: { color: KIND_COLORS[kind] },
    });
  }
  for (const [slope, label] of REFERENCES) {
    traces.push({
      x: span, y: span.map((p) => slope * p), mode: "lines", type: "scatter", name: label,
      line: { dash: "dot", width: 1, color: "#8a94a3" }, hoverinfo: "name",
    });
  }
  draw("plot-capacity-params", traces, {
    xaxis: { title: { text: "parameters" }, type: "log" },
    yaxis: { title: { text: "capacity (bits)" }, type: "log" },
  });
}

function drawComparison(items) {
  const chosen = items.filter((item) => compared.has(item.job_id));
  const plot = document.getElementById("plot-compare");
  plot.classList.toggle("hidden-plot", chosen.length === 0);
  if (chosen.length === 0) { Plotly.purge(plot); return; }
  const traces = chosen.map((item) => ({
    x: item.curve.map((point) => point.n), y: item.curve.map((point) => point.mutual_information_bits),
    mode: "lines+markers", type: "scatter",
    name: `job ${item.job_id} ${describeModel(item.model)} (${item.params} params)`,
  }));
  draw("plot-compare", traces, {
    xaxis: { title: { text: "N (samples)" } }, yaxis: { title: { text: "I (bits)" } },
  });
}

function fillResults(items) {
  const body = document.querySelector("#results-table tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = compared.has(item.job_id);
    box.dataset.job = item.job_id;
    box.addEventListener("change", () => {
      if (box.checked) compared.add(item.job_id); else compared.delete(item.job_id);
      drawComparison(items);
    });
    const tick = document.createElement("td");
    tick.append(box);
    const link = document.createElement("td");
    link.innerHTML = `<a href="#/jobs/${item.job_id}">${item.job_id}</a>`;
    row.append(tick, link, cell(describeModel(item.model)), cell(item.params.toLocaleString(), "num"),
      cell(fixed(item.capacity_bits, 1), "num"), cell(fixed(item.bits_per_param, 3), "num"),
      cell(item.best_n === null ? "–" : item.best_n.toLocaleString(), "num"), qualityCell(item.quality));
    body.append(row);
  }
}

// "tight" when the maximum of I was bracketed and its trial finished, else "lower bound";
// the verdict (what to rerun with) shows on hover
function qualityCell(quality) {
  if (!quality) return cell("–");
  const td = cell(quality.bracketed && quality.best_finished ? "tight" : "lower bound");
  td.title = quality.verdict;
  td.className = "quality";
  return td;
}

function sweepTraces(sweep, prefix) {
  const traces = [];
  for (const curve of sweep.curves) {
    const label = `${prefix}${sweep.regime === "full" || sweep.regime === "half" ? sweep.regime : "N"} ${curve.n}`;
    const bits = curve.points.map((point) => point.bits);
    traces.push({
      x: bits, y: curve.points.map((point) => point.accuracy_retrained), mode: "lines+markers",
      type: "scatter", name: `${label} retrained`,
    });
    traces.push({
      x: bits, y: curve.points.map((point) => point.accuracy_quantized), mode: "lines+markers",
      type: "scatter", name: `${label} direct`, line: { dash: "dash" },
    });
    if (curve.precision_boundary !== null && curve.precision_boundary !== undefined) {
      const at = curve.points.find((point) => point.bits === curve.precision_boundary);
      traces.push({
        x: [curve.precision_boundary], y: [at ? at.accuracy_retrained : curve.float_accuracy],
        mode: "markers", type: "scatter", name: `${label} boundary: ${curve.precision_boundary} bits`,
        marker: { symbol: "star", size: 14 },
      });
    }
  }
  return traces;
}

function drawSweeps(items) {
  showEmpty("plot-quant", "empty-sweeps", items.length === 0);
  if (items.length === 0) return;
  const traces = items.flatMap((sweep) => sweepTraces(sweep, `job ${sweep.job_id} ${describeModel(sweep.model)} `));
  draw("plot-quant", traces, {
    xaxis: { title: { text: "precision (bits)" }, autorange: "reversed", dtick: 1 },
    yaxis: { title: { text: "accuracy" }, range: [0.45, 1.02] },
  });
}

function fillJobs(jobs) {
  document.getElementById("empty-jobs").hidden = jobs.length > 0;
  const body = document.querySelector("#jobs-table tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const row = document.createElement("tr");
    const link = document.createElement("td");
    link.innerHTML = `<a href="#/jobs/${job.id}">${job.id}</a>`;
    row.append(link, cell(job.kind), cell(describeModel(job.spec.model)),
      cell(job.state, `state-${job.state}`), cell(progressText(job)),
      cell(new Date(job.created_at).toLocaleString()));
    body.append(row);
  }
  return jobs.some((job) => job.state === "queued" || job.state === "running");
}

async function showOverview() {
  const query = filterQuery();
  const [curves, sweeps, jobs] = await Promise.all([
    api(`/v1/curves?${query}`), api(`/v1/sweeps?${query}`), api("/v1/jobs?limit=100"),
  ]);
  drawCapacityVsParams(curves.items);
  if (compared.size === 0) curves.items.slice(0, 3).forEach((item) => compared.add(item.job_id));
  fillResults(curves.items);
  drawComparison(curves.items);
  drawSweeps(sweeps.items);
  return fillJobs(jobs.items);
}

// -- one job ------------------------------------------------------------------------------

function drawCapacityCurve(result) {
  const curve = result.curve;
  const best = result.best;
  const memorized = curve.filter((point) => point.accuracy >= 0.99).map((point) => point.n);
  const allFit = memorized.length ? Math.max(...memorized) : curve[0].n;
  const last = curve[curve.length - 1].n;
  const shade = (x0, x1, color, text) => ({
    shape: { type: "rect", xref: "x", yref: "paper", x0, x1, y0: 0, y1: 1, fillcolor: color, opacity: 0.12, line: { width: 0 } },
    note: { x: (x0 + x1) / 2, y: 1.04, xref: "x", yref: "paper", text, showarrow: false, font: { size: 11 } },
  });
  const regions = [shade(curve[0].n, allFit, "#2ca02c", "over-parameterized"),
    shade(allFit, Math.max(best.n, allFit), "#1f77b4", "maximum"),
    shade(Math.max(best.n, allFit), last, "#d62728", "under-parameterized")].filter((r) => r.shape.x1 > r.shape.x0);
  const traces = [
    { x: curve.map((p) => p.n), y: curve.map((p) => p.mutual_information_bits), name: "I (bits)", mode: "lines+markers", type: "scatter" },
    { x: curve.map((p) => p.n), y: curve.map((p) => p.accuracy), name: "accuracy", mode: "lines+markers", type: "scatter", yaxis: "y2", line: { dash: "dot" } },
    { x: [best.n], y: [result.capacity_bits], name: `capacity ${result.capacity_bits.toFixed(1)} bits at N = ${best.n}`, mode: "markers", type: "scatter", marker: { symbol: "star", size: 16 } },
  ];
  return draw("plot-job", traces, {
    xaxis: { title: { text: "N (samples)" } },
    yaxis: { title: { text: "I (bits)" } },
    yaxis2: { title: { text: "accuracy" }, overlaying: "y", side: "right", range: [0.45, 1.02] },
    shapes: regions.map((r) => r.shape), annotations: regions.map((r) => r.note),
  });
}

function drawJobSweep(result) {
  const traces = sweepTraces({ ...result, job_id: "" }, "");
  for (const curve of result.curves) {
    traces.push({
      x: curve.points.map((p) => p.bits), y: curve.points.map((p) => p.mutual_information_bits),
      name: `N ${curve.n} I retrained (bits)`, mode: "lines", type: "scatter", yaxis: "y2", line: { dash: "dot" },
    });
  }
  return draw("plot-job", traces, {
    xaxis: { title: { text: "precision (bits)" }, autorange: "reversed", dtick: 1 },
    yaxis: { title: { text: "accuracy" } },
    yaxis2: { title: { text: "I (bits)" }, overlaying: "y", side: "right" },
  });
}

async function showJob(id) {
  const job = await api(`/v1/jobs/${id}`);
  document.getElementById("job-title").textContent = `Job ${job.id}: ${job.kind}, ${describeModel(job.spec.model)}`;
  const facts = document.getElementById("job-facts");
  facts.replaceChildren();
  const rows = [["state", job.state], ["progress", progressText(job)], ["attempts", `${job.attempts} / ${job.max_attempts}`],
    ["created", new Date(job.created_at).toLocaleString()], ["error", job.error]];
  let result = null;
  if (job.state === "succeeded") {
    result = await api(`/v1/jobs/${id}/result`);
    if (result.capacity_bits !== undefined) rows.push(["capacity", `${result.capacity_bits.toFixed(1)} bits, ${result.bits_per_param.toFixed(3)} bits/param`]);
    if (result.quality) rows.push(["quality", result.quality.verdict]);
    if (result.curves) rows.push(["precision boundary", result.curves.map((c) => `N ${c.n}: ${c.precision_boundary ?? "none"} bits`).join("; ")]);
    rows.push(["CSV", `/v1/jobs/${id}/result?format=csv`]);
  }
  for (const [name, value] of rows.filter((r) => r[1])) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    if (name === "CSV") dd.innerHTML = `<a href="${value}">download the curve</a>`; else dd.textContent = value;
    facts.append(dt, dd);
  }
  const plot = document.getElementById("plot-job");
  plot.classList.toggle("hidden-plot", result === null);
  if (result === null) Plotly.purge(plot);
  else if (result.curve) await drawCapacityCurve(result);
  else await drawJobSweep(result);

  const trials = await api(`/v1/jobs/${id}/trials?limit=500`);
  document.getElementById("empty-trials").hidden = trials.items.length > 0;
  const body = document.querySelector("#trials-table tbody");
  body.replaceChildren();
  for (const t of trials.items) {
    const row = document.createElement("tr");
    row.append(cell(t.index, "num"), cell(t.stage), cell(t.n.toLocaleString(), "num"), cell(fixed(t.lr, 4), "num"),
      cell(t.batch_size, "num"), cell(fixed(t.accuracy, 4), "num"), cell(fixed(t.mutual_information_bits, 1), "num"),
      cell(t.epochs, "num"), cell(t.ended === "rung" ? `rung ${t.rung}` : (t.ended ?? "schedule")), cell(fixed(t.wall_seconds, 1), "num"));
    body.append(row);
  }
  return job.state === "queued" || job.state === "running";
}

// -- routing and refresh --------------------------------------------------------------------

async function render() {
  clearTimeout(refreshTimer);
  const match = location.hash.match(/^#\/jobs\/(\d+)$/);
  document.getElementById("overview").hidden = Boolean(match);
  document.getElementById("job").hidden = !match;
  const error = document.getElementById("error");
  try {
    const live = match ? await showJob(match[1]) : await showOverview();
    error.hidden = true;
    document.body.dataset.rendered = String(Date.now());  // tests wait for this
    if (live) refreshTimer = setTimeout(render, REFRESH_MS);  // jobs running: keep up
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
    document.body.dataset.rendered = String(Date.now());
  }
}

document.getElementById("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  compared.clear();
  render();
});
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("capacity-api-key", document.getElementById("key-input").value.trim());
  document.getElementById("key-form").hidden = true;
  render();
});
window.addEventListener("hashchange", render);
render();
