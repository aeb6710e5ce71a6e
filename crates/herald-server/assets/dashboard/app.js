// herald dashboard: a client of the /v1 API, in plain JavaScript. Counts and charts follow
// GET /v1/stats/stream (read with fetch, so that it carries the bearer token); the events list,
// the detail pane, the subscriptions and the cron schedules are read from the API and refreshed when counts
// move or every few seconds.
"use strict";

const TOKEN_KEY = "herald.token";
const STATUSES = ["scheduled", "pending", "active", "retrying", "succeeded", "dead", "cancelled", "expired"];
const OPEN = new Set(["scheduled", "pending", "retrying"]);
const PAGE_SIZE = 25;
const KEEP_POINTS = 900;

const state = {
  points: [],
  interval: 1000,
  stats: null,
  window: 900,
  filters: {},
  cursors: [null], // keyset: the `after` of each page seen; the last is the current page's
  page: 0,
  next: null,
  selected: null,
  lastListed: 0,
  listSignature: "",
  samplesSinceSubs: 0,
  armed: false,
};

const $ = (sel, root = document) => root.querySelector(sel);

/** Builds an element: el("td", {class: "x", dataset: {id}}, child, "text"). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "style") for (const [p, val] of Object.entries(v)) node.style.setProperty(p, val);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children.flat(Infinity)) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const color = (status) => `var(--s-${status})`;
const badge = (status) => el("span", { class: "badge", style: { "--c": color(status) }, dataset: { status } }, status);

// ---------------------------------------------------------------------------------------------
// The API, with the token

class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let signingIn = null;

/** Resolves once the user has given a token. */
function askForToken(rejected) {
  if (signingIn) return signingIn;
  setLive("signed-out", "token required");
  const dialog = $("#auth");
  const error = $("#auth-error");
  error.hidden = !rejected;
  error.textContent = rejected ? "That token was not accepted. Check --token / HERALD_TOKENS." : "";
  signingIn = new Promise((resolve) => {
    const form = $("#auth-form");
    const submit = (e) => {
      e.preventDefault();
      const token = form.token.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      form.reset();
      form.removeEventListener("submit", submit);
      dialog.close();
      $("#signout").hidden = false;
      signingIn = null;
      resolve();
    };
    form.addEventListener("submit", submit);
    // Escape must not leave the page without a way back.
    dialog.addEventListener("cancel", (e) => e.preventDefault(), { once: true });
    dialog.showModal();
  });
  return signingIn;
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * Answers a 401 to a call made with `used` by asking for a token (again); true when the call
 * should be made again. A call that went out before someone signed in just goes again.
 */
async function handleUnauthorized(response, used) {
  if (response.status !== 401) return false;
  if (sessionStorage.getItem(TOKEN_KEY) !== used) return true;
  sessionStorage.removeItem(TOKEN_KEY);
  await askForToken(used !== null);
  return true;
}

async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = authHeaders(token);
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (await handleUnauthorized(response, token)) continue;
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      throw new ApiFailure(response.status, (data && data.error && data.error.message) || `HTTP ${response.status}`);
    }
    return data;
  }
}

function toast(message, kind = "info") {
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  $("#toasts").append(node);
  setTimeout(() => node.remove(), kind === "error" ? 7000 : 3500);
}

function failed(what, error) {
  toast(`${what}: ${error.message}`, "error");
}

// ---------------------------------------------------------------------------------------------
// Formatting

const numberFormat = new Intl.NumberFormat("en-US");
const fmtCount = (n) => numberFormat.format(n);

function fmtRate(v) {
  if (v === 0) return "0";
  if (v >= 10000) return `${(v / 1000).toFixed(0)}k`;
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 100) return v.toFixed(0);
  if (v >= 1) return v.toFixed(1).replace(/\.0$/, "");
  return v.toFixed(2).replace(/\.?0+$/, "");
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms === 0) return "0";
  if (ms >= 60000) return `${(ms / 60000).toFixed(1).replace(/\.0$/, "")} min`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10000 ? 0 : 1).replace(/\.0$/, "")} s`;
  if (ms >= 10) return `${ms.toFixed(0)} ms`;
  if (ms >= 1) return `${ms.toFixed(1).replace(/\.0$/, "")} ms`;
  return `${ms.toFixed(2)} ms`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");
function fmtClock(date, seconds = true) {
  const hm = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  return seconds ? `${hm}:${pad(date.getSeconds())}` : hm;
}

function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const day = today ? "" : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `;
  return `${day}${fmtClock(d)}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtRelative(iso) {
  const ms = new Date(iso).getTime() - Date.now();
  const abs = Math.abs(ms);
  let text;
  if (abs < 1500) return "just now";
  if (abs < 60000) text = `${Math.round(abs / 1000)}s`;
  else if (abs < 3600000) text = `${Math.round(abs / 60000)}m`;
  else if (abs < 86400000) text = `${Math.round(abs / 3600000)}h`;
  else text = `${Math.round(abs / 86400000)}d`;
  return ms < 0 ? `${text} ago` : `in ${text}`;
}

function fmtDuration(startIso, endIso) {
  if (!endIso) return "running";
  return fmtMs(new Date(endIso).getTime() - new Date(startIso).getTime());
}

const shortId = (id) => `…${id.slice(-8)}`;

/** Pretty JSON as nodes with token classes (text only: nothing from the payload becomes markup). */
function highlightJson(value) {
  const text = JSON.stringify(value, null, 2);
  const nodes = [];
  const re = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (let m; (m = re.exec(text)); ) {
    if (m.index > last) nodes.push(text.slice(last, m.index));
    if (m[1]) {
      nodes.push(el("span", { class: m[2] ? "k" : "s" }, m[1]));
      if (m[2]) nodes.push(m[2]);
    } else if (m[3]) nodes.push(el("span", { class: "b" }, m[3]));
    else nodes.push(el("span", { class: "n" }, m[4]));
    last = re.lastIndex;
  }
  nodes.push(text.slice(last));
  return nodes;
}

// ---------------------------------------------------------------------------------------------
// Live: the stream of samples

function setLive(kind, text) {
  const live = $("#live");
  live.dataset.state = kind;
  $("#live-text").textContent = text || kind;
}

async function follow() {
  let delay = 1000;
  for (;;) {
    try {
      const token = sessionStorage.getItem(TOKEN_KEY);
      const response = await fetch("/v1/stats/stream", { headers: authHeaders(token), cache: "no-store" });
      if (await handleUnauthorized(response, token)) continue;
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      setLive("live", "live");
      delay = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (e) {
      // The server is gone or restarting: try again, less and less often.
    }
    setLive("reconnecting", "reconnecting");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function onMessage(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (event !== "sample" || data.length === 0) return;
  const sample = JSON.parse(data.join("\n"));
  addPoint(sample.point);
  showStats(sample.stats);
  drawCharts();
  maybeRefresh();
}

function addPoint(point) {
  const last = state.points[state.points.length - 1];
  if (last && point.t <= last.t) return;
  state.points.push(point);
  if (state.points.length > KEEP_POINTS) state.points.splice(0, state.points.length - KEEP_POINTS);
}

/** Refreshes the list (first page only: later pages stay put while read) and the open event when counts move. */
function maybeRefresh() {
  const s = state.stats;
  if (!s) return;
  const signature = JSON.stringify([s.events, s.deliveries]);
  const now = Date.now();
  if (signature !== state.listSignature && now - state.lastListed > 1500) {
    state.listSignature = signature;
    if (state.page === 0) loadEvents({ quiet: true });
    if (state.selected) loadDetail(state.selected, { quiet: true });
  }
  state.samplesSinceSubs += 1;
  if (state.samplesSinceSubs >= 5) {
    loadSubscriptions();
    loadCrons();
  } else {
    // Next fire times count down between reads; a tick that passed brings the next read forward.
    const now = Date.now();
    if (state.crons.some((c) => !c.paused && c.next.length && new Date(c.next[0]).getTime() <= now - 500)) loadCrons();
    else showCrons();
  }
}

// ---------------------------------------------------------------------------------------------
// Tiles

function buildTiles() {
  const tiles = $("#tiles");
  const make = (key, label) =>
    el(
      "button",
      {
        type: "button",
        class: "tile",
        dataset: { status: key },
        style: { "--c": color(key) },
        "aria-pressed": "false",
        title: key === "events" ? "All events" : `Show events that are ${key}`,
        onclick: () => filterByStatus(key === "events" ? "" : key),
      },
      el("span", { class: "label" }, label),
      el("span", { class: "value" }, "–"),
      el("span", { class: "note" }),
    );
  tiles.append(make("events", "Events"), ...STATUSES.map((s) => make(s, s)));
}

const TILE_NOTES = {
  scheduled: "deliveries due later",
  pending: "deliveries due now",
  active: "being handled",
  retrying: "waiting to retry",
  succeeded: "handled",
  dead: "no dead letters",
  cancelled: "before they ran",
  expired: "past their ttl",
};

function showStats(stats) {
  if (!stats) return;
  state.stats = stats;
  const set = (key, value, note) => {
    const tile = $(`.tile[data-status="${key}"]`);
    const v = $(".value", tile);
    v.textContent = fmtCount(value);
    v.classList.toggle("nonzero", value > 0);
    $(".note", tile).textContent = note || "";
  };
  set("events", stats.events, stats.unrouted ? `${fmtCount(stats.unrouted)} unrouted` : "all time");
  const last = state.points[state.points.length - 1];
  for (const s of STATUSES) {
    let note = TILE_NOTES[s];
    if (s === "succeeded" && last) note = `${fmtRate(last.succeeded)}/s now`;
    if (s === "dead" && stats.deliveries.dead > 0) note = "need attention";
    set(s, stats.deliveries[s], note);
  }
}

function filterByStatus(status) {
  const form = $("#filters");
  form.status.value = status;
  applyFilters();
}

function markTiles() {
  const status = state.filters.status || "";
  for (const tile of document.querySelectorAll(".tile")) {
    const key = tile.dataset.status;
    tile.setAttribute("aria-pressed", String(status ? key === status : false));
  }
}

// ---------------------------------------------------------------------------------------------
// Charts: SVG by hand

const CHARTS = {
  throughput: {
    series: [
      { key: "published", label: "published", color: "#4f46e5", value: (p) => p.published },
      { key: "succeeded", label: "succeeded", color: "#16a34a", value: (p) => p.succeeded },
      { key: "dead", label: "dead", color: "#dc2626", value: (p) => p.dead },
    ],
    format: fmtRate,
    legendValue: (v) => `${fmtRate(v)}/s`,
    floor: 1,
  },
  lateness: {
    series: [
      { key: "p99", label: "p99", color: "#d97706", value: (p) => (p.lateness ? p.lateness.p99_ms : null) },
      { key: "mean", label: "mean", color: "#0891b2", value: (p) => (p.lateness ? p.lateness.mean_ms : null) },
    ],
    format: fmtMs,
    legendValue: fmtMs,
    floor: 1,
  },
};

function niceCeil(v) {
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * exp) return m * exp;
  return 10 * exp;
}

function buildLegends() {
  for (const [name, chart] of Object.entries(CHARTS)) {
    const legend = $(`#legend-${name}`);
    for (const s of chart.series) {
      legend.append(el("span", { style: { "--c": s.color } }, el("i"), s.label, el("b", { dataset: { key: s.key } }, "–")));
    }
  }
}

function drawCharts() {
  for (const name of Object.keys(CHARTS)) drawChart(name);
}

function drawChart(name) {
  const chart = CHARTS[name];
  const host = $(`#chart-${name}`);
  const width = Math.max(host.clientWidth - 12, 200);
  const height = Math.max(host.clientHeight - 8, 120);
  const m = { top: 10, right: 12, bottom: 22, left: 58 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  // The window, or less while the server has not been up that long (30 s at least).
  const end = state.points.length ? state.points[state.points.length - 1].t : Date.now();
  const first = state.points.length ? state.points[0].t - state.interval : end;
  const span = Math.min(state.window * 1000, Math.max(end - first, 30000));
  const start = end - span;
  const points = state.points.filter((p) => p.t >= start);

  let max = 0;
  for (const s of chart.series) for (const p of points) max = Math.max(max, s.value(p) || 0);
  // Four gridlines at round values.
  const top = niceCeil(Math.max(max * 1.1, chart.floor) / 4) * 4;
  const x = (t) => m.left + ((t - start) / (end - start)) * w;
  const y = (v) => m.top + h - (v / top) * h;

  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${name} chart` });
  const grid = svg("g", { class: "grid" });
  const axis = svg("g", { class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const v = (top / 4) * i;
    grid.append(svg("line", { x1: m.left, x2: m.left + w, y1: y(v), y2: y(v) }));
    axis.append(svg("text", { x: m.left - 8, y: y(v) + 4, "text-anchor": "end" }, chart.format(v)));
  }
  // Time labels at round steps: seconds over a short span, minutes over a long one.
  const step = [15000, 30000, 60000, 120000, 180000, 300000].find((s) => span / s <= 6) || 600000;
  for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
    if (x(t) < m.left + 16 || x(t) > m.left + w - 16) continue;
    axis.append(svg("text", { x: x(t), y: height - 4, "text-anchor": "middle" }, fmtClock(new Date(t), step < 60000)));
    grid.append(svg("line", { x1: x(t), x2: x(t), y1: m.top, y2: m.top + h, "stroke-dasharray": "2 4" }));
  }
  root.append(grid, axis);

  if (points.length < 2) {
    root.append(svg("text", { class: "waiting", x: m.left + w / 2, y: m.top + h / 2, "text-anchor": "middle" }, "Collecting samples…"));
  }

  // Lines break where a value is missing or samples stop (the server was away).
  const gap = state.interval * 2.5;
  chart.series.forEach((s, i) => {
    let d = "";
    let runs = [];
    let run = [];
    let prev = null;
    for (const p of points) {
      const v = s.value(p);
      if (v === null || v === undefined || (prev && p.t - prev.t > gap)) {
        if (run.length) runs.push(run);
        run = [];
      }
      if (v !== null && v !== undefined) run.push([x(p.t), y(v)]);
      prev = p;
    }
    if (run.length) runs.push(run);
    for (const r of runs) {
      d += r.map(([px, py], j) => `${j ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
      if (r.length === 1) d += `h0.1`;
    }
    if (i === 0) {
      for (const r of runs) {
        if (r.length < 2) continue;
        const area = `M${r[0][0].toFixed(1)},${y(0)}` + r.map(([px, py]) => `L${px.toFixed(1)},${py.toFixed(1)}`).join("") + `L${r[r.length - 1][0].toFixed(1)},${y(0)}Z`;
        root.append(svg("path", { class: "area", d: area, fill: s.color, "fill-opacity": "0.08" }));
      }
    }
    root.append(svg("path", { class: "line", d, stroke: s.color }));
  });

  // The legend shows the newest value of each series (lateness: of the last second anything ran).
  for (const s of chart.series) {
    const b = $(`#legend-${name} b[data-key="${s.key}"]`);
    let v = null;
    for (let i = points.length - 1; i >= 0 && (v === null || v === undefined); i--) v = s.value(points[i]);
    b.textContent = v === null || v === undefined ? "–" : chart.legendValue(v);
  }

  // Hover: a cursor and the values at the nearest sample.
  const cursor = svg("line", { class: "cursor", y1: m.top, y2: m.top + h, visibility: "hidden" });
  const overlay = svg("rect", { x: m.left, y: m.top, width: w, height: h, fill: "transparent" });
  root.append(cursor, overlay);
  const tooltip = el("div", { class: "tooltip", hidden: true });
  overlay.addEventListener("mousemove", (e) => {
    if (!points.length) return;
    const box = root.getBoundingClientRect();
    const px = ((e.clientX - box.left) / box.width) * width;
    const t = start + ((px - m.left) / w) * (end - start);
    let best = points[0];
    for (const p of points) if (Math.abs(p.t - t) < Math.abs(best.t - t)) best = p;
    cursor.setAttribute("x1", x(best.t));
    cursor.setAttribute("x2", x(best.t));
    cursor.setAttribute("visibility", "visible");
    tooltip.replaceChildren(
      el("div", { class: "t" }, fmtClock(new Date(best.t))),
      ...chart.series.map((s) => {
        const v = s.value(best);
        return el("div", { style: { "--c": s.color } }, el("i"), `${s.label} `, v === null || v === undefined ? "–" : chart.legendValue(v));
      }),
    );
    tooltip.hidden = false;
    const left = (x(best.t) / width) * box.width;
    tooltip.style.left = `${Math.min(left + 14, box.width - 150)}px`;
    tooltip.style.top = "12px";
  });
  overlay.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    tooltip.hidden = true;
  });
  host.replaceChildren(root, tooltip);
}

async function loadHistory() {
  try {
    const history = await api("/v1/stats/history");
    state.interval = history.interval_ms || 1000;
    for (const p of history.points) addPoint(p);
    if (history.stats) showStats(history.stats);
  } catch (e) {
    failed("Could not load the recent history", e);
  }
  drawCharts();
}

// ---------------------------------------------------------------------------------------------
// Events

const SINCE = { "15m": 15 * 60000, "1h": 3600000, "24h": 86400000 };

function readFilters() {
  const form = $("#filters");
  const filters = {};
  for (const name of ["topic", "status", "subscription", "key", "since"]) {
    const v = form[name].value.trim();
    if (v) filters[name] = v;
  }
  return filters;
}

function applyFilters() {
  state.filters = readFilters();
  state.cursors = [null];
  state.page = 0;
  markTiles();
  loadEvents();
}

function eventsQuery() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) {
    if (k === "since") q.set("since", new Date(Date.now() - SINCE[v]).toISOString());
    else q.set(k, v);
  }
  q.set("limit", String(PAGE_SIZE));
  const after = state.cursors[state.page];
  if (after) q.set("after", after);
  return q.toString();
}

async function loadEvents({ quiet = false } = {}) {
  state.lastListed = Date.now();
  let page;
  const empty = $("#events-empty");
  try {
    page = await api(`/v1/events?${eventsQuery()}`);
  } catch (e) {
    if (quiet) return;
    // A filter the API refuses (a half-typed pattern) is said where the rows would be.
    $("#events tbody").replaceChildren();
    empty.textContent = e.status === 400 ? e.message : `Could not load events: ${e.message}`;
    empty.classList.add("error");
    empty.hidden = false;
    $("#older").disabled = true;
    return;
  }
  state.next = page.next;
  const body = $("#events tbody");
  body.replaceChildren(...page.items.map(eventRow));
  empty.textContent = "No events match these filters.";
  empty.classList.remove("error");
  empty.hidden = page.items.length > 0;
  $("#newer").disabled = state.page === 0;
  $("#older").disabled = !page.next;
  $("#page").textContent = `Page ${state.page + 1}`;
  const shown = page.items.length;
  $("#events-caption").textContent = shown ? `newest first · ${shown}${page.next ? "+" : ""} shown` : "";
}

function eventRow(e) {
  const chips = e.deliveries.length
    ? el(
        "div",
        { class: "chips" },
        e.deliveries.map((d) =>
          el("span", { class: "chip", style: { "--c": color(d.status) }, title: `${d.subscription}: ${d.status}` }, el("i"), d.subscription),
        ),
      )
    : el("span", { class: "muted small" }, "no subscription");
  const when = e.status === "scheduled" ? `due ${fmtRelative(e.deliver_at)}` : fmtRelative(e.published_at);
  return el(
    "tr",
    {
      dataset: { event: e.id },
      "aria-selected": String(state.selected === e.id),
      onclick: () => select(e.id),
    },
    el("td", { class: "time", title: e.published_at }, fmtClock(new Date(e.published_at)), el("small", {}, when)),
    el("td", { class: "topic" }, e.topic),
    el("td", {}, badge(e.status)),
    el("td", {}, chips),
    el("td", { class: "id", title: e.id }, shortId(e.id)),
  );
}

function select(id) {
  state.selected = id;
  for (const row of document.querySelectorAll("#events tbody tr")) {
    row.setAttribute("aria-selected", String(row.dataset.event === id));
  }
  history.replaceState(null, "", `#event=${id}`);
  loadDetail(id);
}

function closeDetail() {
  state.selected = null;
  history.replaceState(null, "", location.pathname);
  for (const row of document.querySelectorAll("#events tbody tr")) row.setAttribute("aria-selected", "false");
  $("#detail").replaceChildren(
    el(
      "div",
      { class: "placeholder" },
      el("strong", {}, "No event selected"),
      el("span", {}, "Pick an event to see its payload, its deliveries and every attempt."),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// The detail pane

async function loadDetail(id, { quiet = false } = {}) {
  // A live refresh must not disarm a button waiting for its confirming click.
  if (quiet && state.armed) return;
  let event;
  try {
    event = await api(`/v1/events/${encodeURIComponent(id)}`);
  } catch (e) {
    if (!quiet) failed("Could not load the event", e);
    return;
  }
  if (state.selected !== id) return;
  const pane = $("#detail");
  const scroll = pane.scrollTop;
  pane.replaceChildren(...detailView(event));
  pane.scrollTop = scroll;
}

function detailView(e) {
  const cancellable = e.deliveries.some((d) => OPEN.has(d.status));
  const head = el(
    "div",
    { class: "detail-head" },
    el("div", { class: "title" }, el("div", { class: "topic" }, e.topic), el("div", { class: "eid" }, e.id)),
    badge(e.status),
    el("button", { type: "button", class: "close", title: "Close", "aria-label": "Close", onclick: closeDetail }, "×"),
  );

  const facts = [
    ["Published", fmtTime(e.published_at)],
    ["Deliver at", `${fmtTime(e.deliver_at)} (${fmtRelative(e.deliver_at)})`],
    ["Expires", e.expires_at ? fmtTime(e.expires_at) : null],
    ["Priority", String(e.priority)],
    ["Key", e.key],
    ["Source", e.source],
    ["Content type", e.content_type],
  ].filter(([, v]) => v);
  const meta = el("dl", { class: "meta" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const actions = cancellable
    ? el("div", { style: { "margin-top": "12px" } }, confirmButton("Cancel event", "Confirm cancel", () => cancelEvent(e.id)))
    : null;

  const headers = Object.entries(e.headers || {});
  const payload =
    e.payload !== undefined
      ? el("pre", { class: "payload" }, highlightJson(e.payload))
      : el("pre", { class: "payload" }, e.payload_base64 ? `base64: ${e.payload_base64}` : "(empty)");

  return [
    head,
    el("section", {}, meta, actions),
    headers.length
      ? el("section", {}, el("h3", {}, "Headers"), el("dl", { class: "meta" }, headers.map(([k, v]) => [el("dt", { class: "mono" }, k), el("dd", { class: "mono" }, v)])))
      : null,
    el("section", {}, el("h3", {}, "Payload"), payload),
    el(
      "section",
      { class: "deliveries" },
      el("h3", {}, "Deliveries", el("span", { class: "count" }, String(e.deliveries.length))),
      e.deliveries.length ? e.deliveries.map(deliveryView) : el("p", { class: "muted" }, "No subscription matched this topic."),
    ),
  ].filter(Boolean);
}

function deliveryView(d) {
  const facts = [`${d.attempt_count} attempt${d.attempt_count === 1 ? "" : "s"}`];
  if (d.status === "scheduled" || d.status === "retrying") facts.push(`due ${fmtRelative(d.due)}`);
  const retry =
    d.status === "dead"
      ? el("button", { type: "button", class: "small primary", dataset: { action: "retry" }, onclick: (ev) => retryDelivery(d.id, ev.currentTarget) }, "Retry")
      : null;
  const attempts = (d.attempts || []).slice().reverse();
  return el(
    "div",
    { class: "delivery", dataset: { delivery: d.id } },
    el("div", { class: "delivery-head" }, el("span", { class: "name" }, d.subscription), badge(d.status), el("span", { class: "spacer" }), retry),
    el("div", { class: "facts" }, facts.join(" · "), el("span", { class: "mono", title: "delivery id" }, ` · ${shortId(d.id)}`)),
    // Why it is dead or waiting to retry; otherwise the attempts below tell.
    d.last_error && (d.status === "dead" || d.status === "retrying") ? el("div", { class: "error" }, d.last_error) : null,
    attempts.length
      ? el(
          "table",
          { class: "attempts" },
          el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "Started"), el("th", {}, "Took"), el("th", {}, "Outcome"), el("th", {}, "Error"))),
          el(
            "tbody",
            {},
            attempts.map((a) =>
              el(
                "tr",
                {},
                el("td", {}, String(a.number)),
                el("td", { title: a.started_at }, fmtClock(new Date(a.started_at))),
                el("td", {}, fmtDuration(a.started_at, a.finished_at)),
                el("td", {}, a.outcome ? outcomeBadge(a.outcome) : el("span", { class: "muted" }, "running")),
                el("td", { class: "err" }, a.error || ""),
              ),
            ),
          ),
        )
      : null,
  );
}

/** An attempt's outcome, coloured like the delivery status it leads to. */
const OUTCOME_COLOR = { succeeded: "succeeded", failed: "retrying", dead: "dead", released: "cancelled", lease_expired: "expired" };
function outcomeBadge(outcome) {
  const b = badge(OUTCOME_COLOR[outcome] || "cancelled");
  b.textContent = outcome.replace("_", " ");
  return b;
}

/** A button that asks for a second click within 3 s before it acts. */
function confirmButton(label, confirmLabel, action) {
  let armed = null;
  const button = el("button", { type: "button", class: "danger small", dataset: { action: "cancel" } }, label);
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = confirmLabel;
      button.classList.add("confirm");
      state.armed = true;
      armed = setTimeout(() => {
        armed = null;
        state.armed = false;
        button.textContent = label;
        button.classList.remove("confirm");
      }, 3000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    state.armed = false;
    button.disabled = true;
    await action();
  });
  return button;
}

async function cancelEvent(id) {
  try {
    const r = await api(`/v1/events/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    toast(`Cancelled ${r.cancelled} deliver${r.cancelled === 1 ? "y" : "ies"}`);
  } catch (e) {
    failed("Could not cancel", e);
  }
  await Promise.all([loadDetail(id), loadEvents({ quiet: true })]);
}

async function retryDelivery(id, button) {
  button.disabled = true;
  button.textContent = "Retrying…";
  try {
    await api(`/v1/deliveries/${encodeURIComponent(id)}/retry`, { method: "POST" });
    toast("The delivery will run again");
  } catch (e) {
    failed("Could not retry", e);
  }
  if (state.selected) await loadDetail(state.selected);
  await loadEvents({ quiet: true });
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

async function loadSubscriptions() {
  state.samplesSinceSubs = 0;
  let subs;
  try {
    subs = await api("/v1/subscriptions");
  } catch (e) {
    return;
  }
  const items = subs.items || [];
  $("#subs tbody").replaceChildren(...items.map(subscriptionRow));
  $("#subs-empty").hidden = items.length > 0;
  const paused = items.filter((s) => s.paused).length;
  $("#subs-caption").textContent = items.length ? `${items.length} · ${paused} paused` : "";
}

function subscriptionRow(s) {
  const action = s.paused ? "resume" : "pause";
  return el(
    "tr",
    { dataset: { subscription: s.name } },
    el("td", { class: "name" }, s.name),
    el("td", {}, el("span", { class: `kind ${s.kind}` }, s.kind)),
    el("td", { class: "pattern" }, s.pattern),
    el("td", { class: "target", title: s.url || "" }, s.url || (s.kind === "pull" ? "claimed over HTTP" : "in the server's process")),
    el("td", {}, s.max_attempts ? String(s.max_attempts) : el("span", { class: "muted" }, "–")),
    el("td", {}, el("span", { class: `state ${s.paused ? "paused" : ""}` }, s.paused ? "Paused" : "Running")),
    el(
      "td",
      { class: "action" },
      el(
        "button",
        {
          type: "button",
          class: "small",
          dataset: { action },
          onclick: (ev) => setPaused(s.name, action, ev.currentTarget),
        },
        s.paused ? "Resume" : "Pause",
      ),
    ),
  );
}

async function setPaused(name, action, button) {
  button.disabled = true;
  try {
    await api(`/v1/subscriptions/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    toast(`${name} ${action === "pause" ? "paused" : "resumed"}`);
  } catch (e) {
    failed(`Could not ${action} ${name}`, e);
  }
  await loadSubscriptions();
}

// ---------------------------------------------------------------------------------------------
// Cron schedules

async function loadCrons() {
  try {
    state.crons = (await api("/v1/cron")).items || [];
  } catch (e) {
    return;
  }
  showCrons();
}

function showCrons() {
  const items = state.crons;
  $("#crons tbody").replaceChildren(...items.map(cronRow));
  $("#crons-empty").hidden = items.length > 0;
  const paused = items.filter((c) => c.paused).length;
  $("#crons-caption").textContent = items.length ? `${items.length} · ${paused} paused · on this server` : "";
}

/** A fire time: `in 3s`, `in 5m`; never "just now" for one still ahead. */
function fmtNext(iso) {
  const ms = new Date(iso).getTime() - Date.now();
  return ms > 0 && ms < 1500 ? "in 1s" : fmtRelative(iso);
}

function cronRow(c) {
  const action = c.paused ? "resume" : "pause";
  const now = Date.now();
  const next = c.next.filter((t) => new Date(t).getTime() > now - 500);
  const nextCell = next.length
    ? [
        el("span", { class: "first", title: next[0] }, fmtNext(next[0])),
        el("span", { class: "then" }, next.length > 1 ? ` then ${next.slice(1, 3).map(fmtNext).join(", ")}` : ""),
      ]
    : el("span", { class: "muted" }, c.paused ? "paused" : "–");
  const last = c.last
    ? [
        c.last.status ? badge(c.last.status) : el("span", { class: "muted" }, "purged"),
        el("span", { class: "when", title: `tick ${c.last.tick} · event ${c.last.event_id}` }, fmtRelative(c.last.tick)),
      ]
    : el("span", { class: "muted" }, "not fired yet");
  return el(
    "tr",
    { dataset: { cron: c.name, last: c.last ? c.last.status || "purged" : "none" } },
    el("td", { class: "name" }, c.name, el("span", { class: "origin", title: "where it was declared" }, c.origin)),
    el("td", { class: "expr" }, c.expr, el("small", {}, `${c.tz} · missed: ${c.missed}`)),
    el("td", { class: "topic" }, c.topic),
    el("td", { class: "next" }, nextCell),
    el("td", { class: "last" }, last, c.last_error ? el("span", { class: "error", title: c.last_error }, c.last_error) : null),
    el("td", {}, el("span", { class: `state ${c.paused ? "paused" : ""}` }, c.paused ? "Paused" : "Running")),
    el(
      "td",
      { class: "action" },
      el(
        "button",
        {
          type: "button",
          class: "small",
          dataset: { action },
          onclick: (ev) => setCronPaused(c.name, action, ev.currentTarget),
        },
        c.paused ? "Resume" : "Pause",
      ),
    ),
  );
}

async function setCronPaused(name, action, button) {
  button.disabled = true;
  try {
    await api(`/v1/cron/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    toast(`Schedule ${name} ${action === "pause" ? "paused" : "resumed"} on this server`);
  } catch (e) {
    failed(`Could not ${action} ${name}`, e);
  }
  await loadCrons();
}

// ---------------------------------------------------------------------------------------------
// Start

function wire() {
  $("#server").textContent = location.host;
  buildTiles();
  buildLegends();
  const form = $("#filters");
  let typing = null;
  form.addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(applyFilters, e.target.tagName === "SELECT" ? 0 : 300);
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    applyFilters();
  });
  form.addEventListener("reset", () => setTimeout(applyFilters, 0));
  $("#older").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    loadEvents();
  });
  $("#newer").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    loadEvents();
  });
  for (const b of document.querySelectorAll("#window button")) {
    b.addEventListener("click", () => {
      state.window = Number(b.dataset.window);
      for (const o of document.querySelectorAll("#window button")) o.setAttribute("aria-pressed", String(o === b));
      $("#window-caption").textContent = `last ${state.window / 60} minutes, live`;
      drawCharts();
    });
  }
  $("#signout").hidden = sessionStorage.getItem(TOKEN_KEY) === null;
  $("#signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(drawCharts, 100);
  });
  // Relative times age while counts stand still; later pages stay as they were read.
  setInterval(() => {
    if (state.page === 0) loadEvents({ quiet: true });
  }, 30000);
}

async function start() {
  wire();
  drawCharts();
  await loadHistory();
  const linked = /^#event=(.+)$/.exec(location.hash);
  await Promise.all([loadEvents(), loadSubscriptions(), loadCrons()]);
  if (linked) select(decodeURIComponent(linked[1]));
  follow();
}

start();
