// The fleet dashboard: plain JavaScript over the read API, charts drawn as SVG here.
// No build step and nothing fetched from elsewhere: the page's CSP allows only 'self'.
// Data goes into the page through textContent and attributes only, never as HTML,
// so a hostname or label cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 15000;
const MAX_PAGES = 20; // a page is up to 10,000 points: far more than a chart can show
const TARGET_BUCKETS = 240; // about one bucket per 2 px of a chart
const MAX_WINDOW_MS = 31 * 86400 * 1000; // the API's cap on a downsampled window
// Bucket widths the dashboard picks from: the smallest that gives <= TARGET_BUCKETS.
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
  43200, 86400];
const PRESETS = [
  ["15m", 15 * 60e3], ["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 86400e3],
  ["7d", 7 * 86400e3], ["All data", null],
];

const state = { config: null, token: sessionStorage.getItem("apiToken"), timer: null,
  preset: null, agg: "avg", route: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(path, params = []) {
  const query = new URLSearchParams(params).toString();
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(`${state.config.api}${path}${query ? "?" + query : ""}`, { headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// Follows next_cursor until the last page (or MAX_PAGES), collecting `field` of each page.
async function allPages(path, params, field) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const body = await api(path, cursor ? [...params, ["cursor", cursor]] : params);
    items.push(...body[field]);
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return items;
}

const ms = (text) => (text ? Date.parse(text) : NaN);

function shortTime(millis) {
  return new Date(millis).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function ago(millis) {
  const seconds = Math.max(0, Math.round((Date.now() - millis) / 1000));
  if (seconds < 90) return `${seconds}s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

function formatValue(value) {
  if (!Number.isFinite(value)) return "–";
  const size = Math.abs(value);
  if (size >= 1e6) return value.toExponential(2);
  if (size >= 100 || Number.isInteger(value)) return value.toFixed(0);
  return value.toFixed(2);
}

function show(...nodes) {
  const app = document.getElementById("app");
  app.replaceChildren(...nodes);
}

function showError(error) {
  if (error instanceof ApiError && error.status === 401) return askToken();
  show(el("p", { class: "error" }, `Could not load: ${error.message}`));
  setStatus("error");
}

function askToken() {
  const form = document.getElementById("token-form").content.firstElementChild.cloneNode(true);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = form.elements.token.value;
    sessionStorage.setItem("apiToken", state.token); // this tab only, gone when it closes
    route();
  });
  show(form);
}

// Fleet view: hosts, their GPUs, and which have gone quiet.

async function fleetView() {
  const gpus = await allPages("/gpus", [["limit", "1000"]], "gpus");
  const staleMs = state.config.stale_after_s * 1000;
  const hosts = new Map();
  for (const gpu of gpus) {
    const host = gpu.hostname || "(unknown host)";
    if (!hosts.has(host)) hosts.set(host, []);
    hosts.get(host).push(gpu);
  }
  // Hosts with a stale GPU first: those are the ones an operator came to look for.
  const isStale = (gpu) => !(Date.now() - ms(gpu.last_seen) <= staleMs);
  const order = [...hosts.keys()].sort((a, b) =>
    hosts.get(b).some(isStale) - hosts.get(a).some(isStale) || a.localeCompare(b));
  const sections = order.map((host) => hostCard(host, hosts.get(host), staleMs));
  const stale = gpus.filter(isStale).length;
  show(
    el("h1", {}, "Fleet"),
    el("div", { class: "summary" },
      el("div", { class: "tile" }, el("b", { "data-count": "hosts" }, hosts.size), "hosts"),
      el("div", { class: "tile" }, el("b", { "data-count": "gpus" }, gpus.length), "GPUs"),
      el("div", { class: "tile" }, el("b", { "data-count": "stale" }, stale),
        `stale (no data for ${state.config.stale_after_s}s)`)),
    gpus.length ? el("div", { class: "hosts" }, ...sections)
      : el("p", { class: "muted" }, "No GPU has been stored yet."),
  );
}

function hostCard(host, gpus, staleMs) {
  gpus.sort((a, b) => (a.gpu_index ?? 1e9) - (b.gpu_index ?? 1e9) || a.uuid.localeCompare(b.uuid));
  const newest = Math.max(...gpus.map((gpu) => ms(gpu.last_seen)).filter(Number.isFinite));
  const rows = gpus.map((gpu) => {
    const seen = ms(gpu.last_seen);
    const isStale = !(Date.now() - seen <= staleMs);
    return el("tr", { "data-uuid": gpu.uuid, class: isStale ? "stale" : "live" },
      el("td", {}, gpu.gpu_index ?? "–"),
      el("td", { class: "uuid mono", title: gpu.uuid },
        el("a", { href: `#/gpu/${encodeURIComponent(gpu.uuid)}` }, gpu.uuid)),
      el("td", {}, gpu.model_name || "–", ...migNote(gpu)),
      el("td", { title: gpu.last_seen || "" }, Number.isFinite(seen) ? ago(seen) : "never"),
      el("td", {}, el("span", { class: `badge ${isStale ? "stale" : "live"}` },
        isStale ? "stale" : "live")));
  });
  return el("section", { class: "host", "data-host": host },
    el("header", {}, el("h2", {}, host),
      el("span", { class: "muted" }, `${gpus.length} GPUs · last seen ${
        Number.isFinite(newest) ? ago(newest) : "never"}`)),
    el("table", {},
      el("thead", {}, el("tr", {}, ...["#", "UUID", "Model", "Last seen", ""].map(
        (name) => el("th", {}, name)))),
      el("tbody", {}, ...rows)));
}

// A GPU split into MIG instances says so next to its model.
function migNote(gpu) {
  const count = (gpu.mig_instances || []).length;
  return count ? [" ", el("span", { class: "mig", title: instanceList(gpu) }, `${count} MIG`)] : [];
}

// "1 (1g.10gb), 2 (3g.40gb)": the GPU's MIG instances with their profiles.
function instanceList(gpu) {
  return (gpu.mig_instances || []).map((instance) =>
    instance.profile ? `${instance.gpu_instance} (${instance.profile})` : instance.gpu_instance)
    .join(", ");
}

// GPU view: one chart per metric over the chosen window, downsampled by the API. A GPU
// split into MIG instances has a series per metric and instance, so a chart for each.

// One series' key: a metric, and its MIG instance ("" for the whole GPU, which comes first).
const seriesKey = (item) => JSON.stringify([item.metric_name, item.gpu_instance || ""]);

function chooseStep(windowMs) {
  const wanted = windowMs / 1000 / TARGET_BUCKETS;
  return STEPS.find((step) => step >= wanted) || STEPS[STEPS.length - 1];
}

function windowFor(preset, gpu, metrics) {
  const newest = Math.max(ms(gpu.last_seen), ...metrics.map((metric) => ms(metric.timestamp)));
  if (preset === "All data") {
    // Replayed files (the bundled sample) lie in the past: show from first to last point.
    let end = Number.isFinite(newest) ? newest : Date.now();
    let start = Number.isFinite(ms(gpu.first_seen)) ? ms(gpu.first_seen) : end - 3600e3;
    if (end - start > MAX_WINDOW_MS) start = end - MAX_WINDOW_MS;
    if (end - start < 60e3) { start -= 30e3; end += 30e3; } // a few points still get a width
    return { start, end };
  }
  const width = PRESETS.find(([name]) => name === preset)[1];
  const end = Date.now();
  return { start: end - width, end };
}

async function gpuView(uuid) {
  const path = `/gpus/${encodeURIComponent(uuid)}`;
  const [gpu, metricList] = await Promise.all([api(path), api(`${path}/metrics`)]);
  const metrics = metricList.metrics;
  if (!state.preset) {
    // Live data: the last hour; a replayed file: all of it.
    const newest = Math.max(...metrics.map((metric) => ms(metric.timestamp)));
    state.preset = Date.now() - newest < 3600e3 ? "1h" : "All data";
  }
  const { start, end } = windowFor(state.preset, gpu, metrics);
  const step = chooseStep(end - start);
  const params = [
    ["start_time", new Date(start).toISOString()], ["end_time", new Date(end).toISOString()],
    ["step", `${step}s`], ["agg", state.agg], ["limit", "10000"],
  ];
  const points = metrics.length ? await allPages(`${path}/telemetry`, params, "points") : [];
  const series = new Map(metrics.map((metric) => [seriesKey(metric), []]));
  for (const point of points) {
    const key = seriesKey(point);
    if (!series.has(key)) series.set(key, []);
    series.get(key).push([ms(point.timestamp), point.value]);
  }
  const latest = new Map(metrics.map((metric) => [seriesKey(metric), metric]));
  const byName = (a, b) => {
    const [nameA, instanceA] = JSON.parse(a), [nameB, instanceB] = JSON.parse(b);
    return nameA.localeCompare(nameB) ||
      instanceA.localeCompare(instanceB, undefined, { numeric: true });
  };
  const cards = [...series.keys()].sort(byName).map((key) => {
    const [name, instance] = JSON.parse(key);
    return chartCard(name, instance, series.get(key), latest.get(key), start, end, step * 1000);
  });
  show(
    el("p", {}, el("a", { href: "#/" }, "← Fleet")),
    el("h1", { class: "mono" }, gpu.uuid),
    el("div", { class: "meta" },
      ...[["Host", gpu.hostname], ["Index", gpu.gpu_index], ["Device", gpu.device],
        ["Model", gpu.model_name], ["Pod", gpu.pod], ["PCI bus", gpu.pci_bus_id],
        ["Driver", gpu.driver_version], ["MIG instances", instanceList(gpu) || null],
        ["First seen", gpu.first_seen], ["Last seen", gpu.last_seen]]
        .filter(([, value]) => value !== null && value !== undefined)
        .map(([name, value]) => el("span", {}, `${name} `, el("b", {}, value)))),
    controls(),
    el("p", { class: "muted" },
      `${shortTime(start)} – ${shortTime(end)}, ${state.agg} per ${step}s bucket`),
    cards.length ? el("div", { class: "charts" }, ...cards)
      : el("p", { class: "muted" }, "No metric has been stored for this GPU."),
  );
}

function controls() {
  const presets = el("div", { class: "presets", role: "group", "aria-label": "Window" },
    ...PRESETS.map(([name]) => {
      const button = el("button", { type: "button", "aria-pressed": String(name === state.preset),
        "data-preset": name }, name);
      button.addEventListener("click", () => { state.preset = name; route(); });
      return button;
    }));
  const agg = el("select", { "aria-label": "Aggregation", name: "agg" },
    ...["avg", "min", "max", "last"].map((name) =>
      el("option", name === state.agg ? { value: name, selected: "" } : { value: name }, name)));
  agg.addEventListener("change", () => { state.agg = agg.value; route(); });
  return el("div", { class: "controls" }, presets, el("label", {}, "Aggregation ", agg));
}

function chartCard(name, instance, points, latest, start, end, stepMs) {
  const title = instance ? `${name} · MIG ${instance}` : name;
  return el("section", { class: "chart-card", "data-metric": name,
    "data-instance": instance || null },
    el("header", {}, el("h2", { class: "mono" }, name,
      ...(instance ? [" ", el("span", { class: "mig" }, `MIG ${instance}`)] : [])),
      el("span", { class: "latest", title: latest ? latest.timestamp : "" },
        latest ? `latest ${formatValue(latest.value)}` : "")),
    seriesChart(name, instance, title, points, start, end, stepMs));
}

// A chart labelled with its metric and MIG instance, so tests and tools can find it.
function seriesChart(name, instance, title, points, start, end, stepMs) {
  const drawn = chart(title, points, start, end, stepMs);
  drawn.setAttribute("data-metric", name);
  if (instance) drawn.setAttribute("data-instance", instance);
  return drawn;
}

// A line chart of [millis, value] pairs over [start, end]; gaps longer than two buckets
// break the line rather than drawing a slope across missing data.
function chart(name, points, start, end, stepMs) {
  const width = 480, height = 150, left = 46, right = 8, top = 8, bottom = 20;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${name} over time`, "data-metric": name, "data-points": points.length });
  const plotW = width - left - right, plotH = height - top - bottom;
  let low = Math.min(...points.map((p) => p[1])), high = Math.max(...points.map((p) => p[1]));
  if (!points.length) { low = 0; high = 1; }
  if (low === high) { low -= 1; high += 1; }
  const pad = (high - low) * 0.08;
  low -= pad; high += pad;
  const x = (t) => left + ((t - start) / Math.max(1, end - start)) * plotW;
  const y = (v) => top + (1 - (v - low) / (high - low)) * plotH;
  for (const fraction of [0, 0.5, 1]) {
    const value = low + (high - low) * fraction;
    root.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    root.append(svg("text", { class: "axis", x: left - 4, y: y(value) + 3, "text-anchor": "end" },
      formatValue(value)));
  }
  root.append(svg("text", { class: "axis", x: left, y: height - 5 }, shortTime(start)));
  root.append(svg("text", { class: "axis", x: width - right, y: height - 5, "text-anchor": "end" },
    shortTime(end)));
  if (!points.length) {
    root.append(svg("text", { class: "empty", x: left + plotW / 2, y: top + plotH / 2,
      "text-anchor": "middle" }, "no data in this window"));
    return root;
  }
  let line = "";
  let previous = null;
  for (const [t, v] of points) {
    const joined = previous !== null && t - previous <= 2 * stepMs;
    line += `${joined ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    previous = t;
  }
  root.append(svg("path", { class: "series", d: line }));
  // Points with no neighbour would be invisible as a path: mark every point when there are few.
  if (points.length <= 60) {
    for (const [t, v] of points) {
      const dot = svg("circle", { class: "dot", cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.5 });
      dot.append(svg("title", {}, `${shortTime(t)}  ${formatValue(v)}`));
      root.append(dot);
    }
  }
  return root;
}

// Routing and refresh.

async function route() {
  clearTimeout(state.timer);
  const match = location.hash.match(/^#\/gpu\/(.+)$/);
  const next = match ? decodeURIComponent(match[1]) : "fleet";
  if (next !== state.route) { state.route = next; state.preset = null; }
  try {
    setStatus("loading…");
    if (match) await gpuView(next); else await fleetView();
    setStatus(`updated ${new Date().toISOString().slice(11, 19)}Z`);
    document.body.dataset.loaded = next; // for tests: the view finished drawing
  } catch (error) {
    showError(error);
  }
  schedule();
}

// Refreshes itself; a hidden tab skips its turns instead of loading the API for nobody.
function schedule() {
  state.timer = setTimeout(() => (document.hidden ? schedule() : route()), REFRESH_MS);
}

async function start() {
  const response = await fetch("/dashboard/config.json");
  state.config = await response.json();
  window.addEventListener("hashchange", route);
  route();
}

start();
