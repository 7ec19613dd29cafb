// tracemesh UI: plain JavaScript and SVG, no build step. Routes on the
// path so deep links (/trace/ID, /search?...) work on reload.
"use strict";

const app = document.getElementById("app");
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) {
    const msg = (body.errors && body.errors[0] && body.errors[0].msg) || (body.error && body.error.message) || response.statusText;
    throw new Error(msg);
  }
  return body;
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (link && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    navigate(link.getAttribute("href"));
  }
});
window.addEventListener("popstate", route);

function colour(service) {
  let h = 0;
  for (const ch of service) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 62%, 52%)`;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  if (ms >= 1) return ms.toFixed(2) + " ms";
  return (ms * 1000).toFixed(0) + " µs";
}

function fmtTime(us) {
  return new Date(us / 1000).toLocaleTimeString();
}

function showError(error) {
  app.replaceChildren(el("p", { class: "error-text", id: "error" }, String(error.message || error)));
}

// ---------- search ----------

const SINCE = ["15m", "1h", "6h", "24h", "48h"];

async function searchPage() {
  const params = new URLSearchParams(location.search);
  const services = (await api("/api/services")).data || [];
  const service = params.get("service") || services[0] || "";
  const form = el("form", { class: "filters", id: "search-form" });
  const serviceSelect = el("select", { name: "service", id: "service" }, services.map((s) => el("option", { value: s }, s)));
  serviceSelect.value = service;
  const operationSelect = el("select", { name: "operation", id: "operation" }, el("option", { value: "" }, "all"));
  async function loadOperations(name) {
    operationSelect.replaceChildren(el("option", { value: "" }, "all"));
    if (!name) return;
    const ops = (await api(`/api/services/${encodeURIComponent(name)}/operations`)).data || [];
    for (const op of ops) operationSelect.append(el("option", { value: op }, op));
  }
  serviceSelect.addEventListener("change", () => loadOperations(serviceSelect.value));
  await loadOperations(service);
  operationSelect.value = params.get("operation") || "";
  const field = (label, input) => el("label", {}, label, input);
  const input = (name, placeholder) => el("input", { name, id: name, placeholder, value: params.get(name) || "" });
  const since = el("select", { name: "since", id: "since" }, SINCE.map((s) => el("option", { value: s }, "last " + s)));
  since.value = params.get("since") || "1h";
  form.append(
    field("Service", serviceSelect),
    field("Operation", operationSelect),
    field("Tags (k=v, space separated)", input("tags", "http.route=/cart error=true")),
    field("Min duration", input("min_duration", "100ms")),
    field("Max duration", input("max_duration", "2s")),
    field("Time range", since),
    field("Limit", el("input", { name: "limit", id: "limit", type: "number", min: 1, max: 1000, value: params.get("limit") || "20" })),
    el("button", { type: "submit", id: "find" }, "Find traces"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    navigate("/search?" + next.toString());
  });
  const results = el("div", { id: "results" });
  app.replaceChildren(form, results);
  if (!service || !params.has("service")) {
    results.append(el("p", { class: "muted" }, services.length ? "Pick a service and find traces." : "No spans stored yet."));
    return;
  }
  const query = new URLSearchParams({ service, since: since.value, limit: params.get("limit") || "20" });
  for (const key of ["operation", "min_duration", "max_duration"]) if (params.get(key)) query.set(key, params.get(key));
  for (const tag of (params.get("tags") || "").split(/\s+/).filter(Boolean)) {
    if (tag === "error=true") query.set("errors", "true");
    else query.append("tag", tag);
  }
  const body = await api("/api/v1/traces?" + query.toString());
  renderResults(results, body.traces);
}

function renderResults(container, traces) {
  container.replaceChildren(
    el("div", { class: "panel" }, el("h2", {}, `${traces.length} traces`), scatter(traces)),
    el("table", { id: "trace-list" },
      el("tr", {}, el("th", {}, "Trace"), el("th", {}, "Root"), el("th", { class: "num" }, "Spans"), el("th", { class: "num" }, "Errors"), el("th", { class: "num" }, "Duration"), el("th", {}, "Start")),
      traces.map((t) => el("tr", { class: "trace-row" },
        el("td", {}, el("a", { href: `/trace/${t.trace_id}`, "data-link": "" }, t.trace_id.slice(0, 16))),
        el("td", {}, `${t.root_service}: ${t.root_operation}`),
        el("td", { class: "num" }, t.spans),
        el("td", { class: "num" + (t.errors ? " error-text" : "") }, t.errors),
        el("td", { class: "num" }, fmtMs(t.duration_ms)),
        el("td", {}, fmtTime(t.start_us)),
      )),
    ),
  );
}

function scatter(traces) {
  const w = 900, h = 220, pad = 44;
  const chart = svg("svg", { id: "scatter", viewBox: `0 0 ${w} ${h}`, width: "100%", height: h });
  if (!traces.length) return chart;
  const xs = traces.map((t) => t.start_us), ys = traces.map((t) => t.duration_ms);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1, y1 = Math.max(...ys) || 1;
  const x = (v) => pad + ((v - x0) / Math.max(1, x1 - x0)) * (w - 2 * pad);
  const y = (v) => h - pad / 2 - (v / y1) * (h - pad);
  chart.append(svg("line", { class: "axis", x1: pad, y1: h - pad / 2, x2: w - pad, y2: h - pad / 2 }));
  chart.append(svg("line", { class: "axis", x1: pad, y1: pad / 2, x2: pad, y2: h - pad / 2 }));
  chart.append(svg("text", { x: 2, y: pad / 2 + 4 }, fmtMs(y1)));
  chart.append(svg("text", { x: pad, y: h - 4 }, fmtTime(x0)));
  chart.append(svg("text", { x: w - pad - 60, y: h - 4 }, fmtTime(x1)));
  for (const t of traces) {
    const r = Math.min(12, 3 + Math.sqrt(t.spans));
    const dot = svg("circle", { class: "dot" + (t.errors ? " err" : ""), cx: x(t.start_us), cy: y(t.duration_ms), r, fill: colour(t.root_service), onclick: () => navigate(`/trace/${t.trace_id}`) },
      svg("title", {}, `${t.root_service}: ${t.root_operation} ${fmtMs(t.duration_ms)}`));
    chart.append(dot);
  }
  return chart;
}

// ---------- trace ----------

async function tracePage(id) {
  const body = await api(`/api/traces/${encodeURIComponent(id)}`);
  const trace = body.data[0];
  const spans = trace.spans;
  const byId = new Map(spans.map((s) => [s.spanID, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    const parent = (s.references || []).find((r) => r.refType === "CHILD_OF" && byId.has(r.spanID));
    if (parent) {
      if (!children.has(parent.spanID)) children.set(parent.spanID, []);
      children.get(parent.spanID).push(s);
    } else roots.push(s);
  }
  const order = [];
  const stack = roots.slice().sort((a, b) => b.startTime - a.startTime).map((s) => [s, 0]);
  while (stack.length) {
    const [s, depth] = stack.pop();
    order.push([s, depth]);
    const kids = (children.get(s.spanID) || []).slice().sort((a, b) => b.startTime - a.startTime);
    for (const k of kids) stack.push([k, depth + 1]);
  }
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const total = Math.max(1, end - start);
  const service = (s) => trace.processes[s.processID].serviceName;
  const isError = (s) => (s.tags || []).some((t) => t.key === "error" && t.value === true);
  const services = [...new Set(spans.map(service))];
  const head = el("div", { class: "trace-head" },
    el("h2", {}, `Trace ${trace.traceID}`),
    el("span", {}, el("b", { id: "span-count" }, spans.length), " spans"),
    el("span", {}, `${services.length} services`),
    el("span", {}, "duration ", fmtMs(total / 1000)),
  );
  const legend = el("div", { class: "legend" }, services.map((s) => el("span", {}, el("i", { style: `background:${colour(s)}` }), s)));
  const ticks = el("div", { class: "ticks" });
  for (let i = 0; i <= 4; i++) ticks.append(el("span", { style: `left:${i * 25}%;${i === 4 ? "transform:translateX(-100%)" : ""}` }, fmtMs((total * i) / 4 / 1000)));
  const rows = document.createDocumentFragment();
  const details = el("div", { class: "panel details", id: "span-details" }, el("p", { class: "muted" }, "Click a span for its attributes, events and resource."));
  let selected = null;
  for (const [s, depth] of order) {
    const left = ((s.startTime - start) / total) * 100;
    const width = (s.duration / total) * 100;
    const failed = isError(s);
    const row = el("div", { class: "row", "data-span-id": s.spanID },
      el("div", { class: "label", style: `padding-left:${4 + depth * 12}px`, title: `${service(s)}: ${s.operationName}` },
        failed ? el("span", { class: "err-mark" }, "!") : null,
        el("span", { class: "svc" }, service(s)), " ", s.operationName),
      el("div", { class: "track" },
        el("div", { class: "bar" + (failed ? " error" : ""), style: `left:${left}%;width:${width}%;background:${colour(service(s))}` }),
        el("span", { class: "dur", style: `left:calc(${Math.min(left + width, 92)}% + 4px)` }, fmtMs(s.duration / 1000))),
    );
    row.addEventListener("click", () => {
      if (selected) selected.classList.remove("selected");
      selected = row;
      row.classList.add("selected");
      details.replaceChildren(spanDetails(s, trace.processes[s.processID]));
    });
    rows.append(row);
  }
  const waterfall = el("div", { class: "waterfall", id: "waterfall" }, ticks);
  waterfall.append(rows);
  app.replaceChildren(head, legend, waterfall, details);
}

function kvTable(title, items) {
  return el("div", {},
    el("h3", {}, title),
    items.length
      ? el("table", {}, items.map((t) => el("tr", {}, el("td", {}, t.key), el("td", {}, typeof t.value === "object" ? JSON.stringify(t.value) : String(t.value)))))
      : el("p", { class: "muted" }, "none"));
}

function spanDetails(span, process) {
  return el("div", {},
    el("h2", {}, `${process.serviceName}: ${span.operationName}`),
    el("p", { class: "muted" }, `span ${span.spanID} · start ${fmtTime(span.startTime)} · duration ${fmtMs(span.duration / 1000)}`),
    kvTable("Attributes", span.tags || []),
    el("div", {}, el("h3", {}, "Events"),
      (span.logs || []).length
        ? el("table", {}, span.logs.map((l) => el("tr", {}, el("td", {}, fmtTime(l.timestamp)), el("td", {}, l.fields.map((f) => `${f.key}=${f.value}`).join(" ")))))
        : el("p", { class: "muted" }, "none")),
    kvTable("Resource", [{ key: "service.name", value: process.serviceName }, ...(process.tags || [])]),
  );
}

// ---------- services ----------

function lineChart(id, title, series, unit, [x0, x1]) {
  const w = 420, h = 180, pad = 40;
  const points = series.flatMap((s) => s.points);
  const chart = svg("svg", { id, class: "chart", viewBox: `0 0 ${w} ${h}`, width: "100%", height: h, "data-points": points.length });
  const y1 = Math.max(...points.map((p) => p[1]), 0) || 1;
  const x = (v) => pad + ((v - x0) / Math.max(1, x1 - x0)) * (w - pad - 10);
  const y = (v) => h - 20 - (v / y1) * (h - 40);
  chart.append(svg("line", { class: "axis", x1: pad, y1: h - 20, x2: w - 10, y2: h - 20 }));
  chart.append(svg("text", { x: 2, y: 24 }, unit(y1)));
  chart.append(svg("text", { x: 2, y: h - 22 }, unit(0)));
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    chart.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2, class: "line" }));
    if (s.points.length < 30) for (const p of s.points) chart.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: s.colour }));
  }
  const legend = el("div", { class: "legend" }, series.map((s) => el("span", {}, el("i", { style: `background:${s.colour}` }), s.name)));
  return el("div", { class: "panel" }, el("h2", {}, title), chart, legend);
}

async function servicesPage() {
  const params = new URLSearchParams(location.search);
  const services = (await api("/api/services")).data || [];
  const service = params.get("service") || services[0];
  const since = params.get("since") || "1h";
  const select = el("select", { id: "overview-service" }, services.map((s) => el("option", { value: s }, s)));
  const range = el("select", { id: "overview-since" }, SINCE.map((s) => el("option", { value: s }, "last " + s)));
  select.value = service || "";
  range.value = since;
  const go = () => navigate(`/services?service=${encodeURIComponent(select.value)}&since=${range.value}`);
  select.addEventListener("change", go);
  range.addEventListener("change", go);
  const bar = el("form", { class: "filters" }, el("label", {}, "Service", select), el("label", {}, "Time range", range));
  if (!service) {
    app.replaceChildren(bar, el("p", { class: "muted" }, "No spans stored yet."));
    return;
  }
  const step = { "15m": "15s", "1h": "1m", "6h": "5m", "24h": "15m", "48h": "30m" }[since] || "1m";
  const q = `service=${encodeURIComponent(service)}&since=${since}`;
  const [series, red] = await Promise.all([api(`/api/v1/series?${q}&step=${step}`), api(`/api/v1/red?${q}&by_operation=true`)]);
  const pts = series.series[0] ? series.series[0].points : [];
  const line = (name, colourValue, key) => ({ name, colour: colourValue, points: pts.filter((p) => p[key] !== null).map((p) => [p.t_ms, p[key]]) });
  const domain = [pts.length ? pts[0].t_ms : 0, pts.length ? pts[pts.length - 1].t_ms : 1];
  const charts = el("div", { class: "charts", id: "charts" },
    lineChart("chart-rate", "Request rate", [line("req/s", "#2f6fde", "rate")], (v) => v.toFixed(2) + "/s", domain),
    lineChart("chart-errors", "Error rate", [line("errors", "#c62828", "error_rate")], (v) => (v * 100).toFixed(1) + "%", domain),
    lineChart("chart-latency", "Latency", [line("p50", "#2e7d32", "p50_ms"), line("p95", "#ef6c00", "p95_ms"), line("p99", "#c62828", "p99_ms")], fmtMs, domain),
  );
  const table = el("table", { id: "operations" },
    el("tr", {}, el("th", {}, "Operation"), el("th", { class: "num" }, "Calls"), el("th", { class: "num" }, "Req/s"), el("th", { class: "num" }, "Error rate"), el("th", { class: "num" }, "p50"), el("th", { class: "num" }, "p95"), el("th", { class: "num" }, "p99")),
    red.rows.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `/search?service=${encodeURIComponent(service)}&operation=${encodeURIComponent(r.operation)}&since=${since}`, "data-link": "" }, r.operation)),
      el("td", { class: "num" }, r.calls), el("td", { class: "num" }, r.rate.toFixed(3)),
      el("td", { class: "num" + (r.errors ? " error-text" : "") }, (r.error_rate * 100).toFixed(2) + "%"),
      el("td", { class: "num" }, fmtMs(r.latency.p50_ms)), el("td", { class: "num" }, fmtMs(r.latency.p95_ms)), el("td", { class: "num" }, fmtMs(r.latency.p99_ms)))));
  app.replaceChildren(bar, charts, el("div", { class: "panel" }, el("h2", {}, "Operations"), table));
}

// ---------- dependencies ----------

async function dependenciesPage() {
  const body = await api("/api/v1/dependencies?since=48h");
  const edges = body.edges;
  const nodes = [...new Set(edges.flatMap((e) => [e.parent, e.child]))].sort();
  // Columns by distance from the callers nobody calls (breadth first;
  // services only reachable through a cycle start a column of their own).
  const depth = new Map();
  const called = new Set(edges.filter((e) => e.parent !== e.child).map((e) => e.child));
  let frontier = nodes.filter((n) => !called.has(n));
  while (depth.size < nodes.length) {
    if (!frontier.length) frontier = [nodes.find((n) => !depth.has(n))];
    for (const n of frontier) depth.set(n, depth.has(n) ? depth.get(n) : 0);
    let next = [];
    for (const n of frontier) {
      for (const e of edges) {
        if (e.parent === n && !depth.has(e.child)) {
          depth.set(e.child, depth.get(n) + 1);
          next.push(e.child);
        }
      }
    }
    frontier = next;
  }
  const columns = new Map();
  for (const n of nodes) {
    const d = depth.get(n);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n);
  }
  const colW = 230, rowH = 60;
  const w = Math.max(600, 60 + (Math.max(0, ...depth.values()) + 1) * colW);
  const h = Math.max(120, Math.max(0, ...[...columns.values()].map((c) => c.length)) * rowH + 40);
  const pos = new Map();
  for (const [d, list] of columns) list.forEach((n, i) => pos.set(n, [40 + d * colW, 30 + i * rowH]));
  const graph = svg("svg", { id: "dependency-graph", viewBox: `0 0 ${w} ${h}`, width: "100%", height: h },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" }, svg("path", { d: "M0,0L10,5L0,10z", fill: "#6b7385" }))));
  for (const e of edges) {
    const [x1, y1] = pos.get(e.parent), [x2, y2] = pos.get(e.child);
    const forward = x2 > x1;
    const [sx, sy, tx, ty] = forward ? [x1 + 120, y1 + 12, x2, y2 + 12] : [x1 + 60, y1 + (y2 > y1 ? 24 : 0), x2 + 60, y2 + (y2 > y1 ? 0 : 24)];
    graph.append(svg("line", { class: "edge", x1: sx, y1: sy, x2: tx, y2: ty, stroke: e.errors ? "#c62828" : "#6b7385", "stroke-width": 1.5, "marker-end": "url(#arrow)" }));
    graph.append(svg("text", { x: (sx + tx) / 2 - 20, y: (sy + ty) / 2 - 4 }, `${e.calls}${e.errors ? ` (${e.errors} err)` : ""}`));
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n);
    graph.append(svg("g", { class: "node" }, svg("rect", { x, y, width: 120, height: 24, rx: 4, fill: colour(n) }), svg("text", { x: x + 6, y: y + 16, fill: "#fff", style: "fill:#fff" }, n)));
  }
  const table = el("table", { id: "edges" },
    el("tr", {}, el("th", {}, "Caller"), el("th", {}, "Callee"), el("th", { class: "num" }, "Calls"), el("th", { class: "num" }, "Errors")),
    edges.map((e) => el("tr", {}, el("td", {}, e.parent), el("td", {}, e.child), el("td", { class: "num" }, e.calls), el("td", { class: "num" }, e.errors))));
  app.replaceChildren(el("div", { class: "panel" }, el("h2", {}, "Service dependencies (last 48h)"), edges.length ? graph : el("p", { class: "muted" }, "No calls between services yet."), table));
}

// ---------- routing ----------

async function route() {
  const path = location.pathname;
  delete document.body.dataset.ready;
  app.replaceChildren(el("p", { class: "muted" }, "loading…"));
  try {
    if (path.startsWith("/trace/")) await tracePage(decodeURIComponent(path.slice(7)));
    else if (path === "/services") await servicesPage();
    else if (path === "/dependencies") await dependenciesPage();
    else await searchPage();
    document.body.dataset.ready = path;
  } catch (error) {
    showError(error);
    document.body.dataset.ready = "error";
  }
}

route();
