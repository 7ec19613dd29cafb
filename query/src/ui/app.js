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

// Opens the trace whose id was typed into a trace-id box.
function openTrace(box) {
  const id = box.value.trim().toLowerCase();
  if (id) navigate(`/trace/${encodeURIComponent(id)}`);
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

// An absolute time for axis labels: HH:MM (with seconds for short ranges).
function fmtClock(ms, span) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return span < 10 * 60 * 1000 ? `${hm}:${pad(d.getSeconds())}` : hm;
}

// datetime-local value <-> µs since the epoch.
function toLocalInput(us) {
  const d = new Date(us / 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function fromLocalInput(text) {
  const ms = new Date(text).getTime();
  return Number.isFinite(ms) ? ms * 1000 : null;
}

// The time range of a page: `start`/`end` (µs) when given, else `since`.
function rangeParams(params) {
  const out = new URLSearchParams();
  if (params.get("start")) {
    out.set("start", params.get("start"));
    if (params.get("end")) out.set("end", params.get("end"));
  } else out.set("since", params.get("since") || "1h");
  return out;
}

// A time-range picker: relative ("last 1h") or absolute (from/to).
function rangePicker(params) {
  const since = el("select", { name: "since", id: "since" }, SINCE.map((s) => el("option", { value: s }, "last " + s)), el("option", { value: "custom" }, "absolute…"));
  const start = el("input", { type: "datetime-local", name: "start_local", id: "start" });
  const end = el("input", { type: "datetime-local", name: "end_local", id: "end" });
  const absolute = el("span", { class: "absolute" }, el("label", {}, "From", start), el("label", {}, "To", end));
  if (params.get("start")) {
    since.value = "custom";
    start.value = toLocalInput(Number(params.get("start")));
    end.value = toLocalInput(Number(params.get("end") || Date.now() * 1000));
  } else {
    since.value = params.get("since") || "1h";
    absolute.hidden = true;
  }
  since.addEventListener("change", () => {
    absolute.hidden = since.value !== "custom";
    if (since.value === "custom" && !start.value) {
      start.value = toLocalInput((Date.now() - 3600 * 1000) * 1000);
      end.value = toLocalInput(Date.now() * 1000);
    }
  });
  const write = (next) => {
    next.delete("since"); next.delete("start"); next.delete("end"); next.delete("start_local"); next.delete("end_local");
    if (since.value === "custom") {
      const from = fromLocalInput(start.value), to = fromLocalInput(end.value);
      if (from !== null) next.set("start", String(from));
      if (to !== null) next.set("end", String(to));
    } else next.set("since", since.value);
  };
  return { node: el("label", {}, "Time range", since), absolute, write };
}

function showError(error) {
  app.replaceChildren(el("p", { class: "error-text", id: "error" }, String(error.message || error)));
}

// ---------- search ----------

const SINCE = ["15m", "1h", "6h", "24h", "48h"];

const SORTS = [["newest", "Most recent"], ["longest", "Longest first"], ["shortest", "Shortest first"], ["most_spans", "Most spans"], ["most_errors", "Most errors"]];

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
  const range = rangePicker(params);
  const sort = el("select", { name: "sort", id: "sort" }, SORTS.map(([v, label]) => el("option", { value: v }, label)));
  sort.value = params.get("sort") || "newest";
  form.append(
    field("Service", serviceSelect),
    field("Operation", operationSelect),
    field("Tags (k=v, space separated, \"quoted values\")", input("tags", "http.route=/cart error=true note=\"two words\"")),
    field("Min duration", input("min_duration", "100ms")),
    field("Max duration", input("max_duration", "2s")),
    range.node, range.absolute,
    field("Sort", sort),
    field("Limit", el("input", { name: "limit", id: "limit", type: "number", min: 1, max: 1000, value: params.get("limit") || "20" })),
    el("button", { type: "submit", id: "find" }, "Find traces"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    range.write(next);
    navigate("/search?" + next.toString());
  });
  const results = el("div", { id: "results" });
  app.replaceChildren(form, results);
  if (!service || !params.has("service")) {
    results.append(el("p", { class: "muted" }, services.length ? "Pick a service and find traces." : "No spans stored yet."));
    return;
  }
  const query = rangeParams(params);
  query.set("service", service);
  query.set("limit", params.get("limit") || "20");
  query.set("sort", sort.value);
  for (const key of ["operation", "min_duration", "max_duration", "tags"]) if (params.get(key)) query.set(key, params.get(key));
  const body = await api("/api/v1/traces?" + query.toString());
  renderResults(results, body.traces);
}

function renderResults(container, traces) {
  const compare = el("button", { type: "button", id: "compare", disabled: "" }, "Compare two");
  const picked = () => [...container.querySelectorAll(".pick:checked")].map((c) => c.value);
  compare.addEventListener("click", () => {
    const [a, b] = picked();
    navigate(`/compare?a=${a}&b=${b}`);
  });
  const onPick = () => { compare.disabled = picked().length !== 2; };
  container.replaceChildren(
    el("div", { class: "panel" }, el("h2", {}, `${traces.length} traces`, " ", compare), scatter(traces)),
    el("table", { id: "trace-list" },
      el("tr", {}, el("th", {}, ""), el("th", {}, "Trace"), el("th", {}, "Root"), el("th", { class: "num" }, "Spans"), el("th", { class: "num" }, "Errors"), el("th", { class: "num" }, "Duration"), el("th", {}, "Start")),
      traces.map((t) => el("tr", { class: "trace-row" },
        el("td", {}, el("input", { type: "checkbox", class: "pick", value: t.trace_id, onchange: onPick })),
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

const isError = (s) => (s.tags || []).some((t) => t.key === "error" && t.value === true);

// A trace's spans as a tree, in waterfall order: [span, depth] pairs.
function treeOrder(spans) {
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
  return order;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const a = el("a", { href: url, download: name, id: "download-link" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function tracePage(id) {
  const params = new URLSearchParams(location.search);
  const [body, critical] = await Promise.all([
    api(`/api/traces/${encodeURIComponent(id)}`),
    api(`/api/v1/traces/${encodeURIComponent(id)}/critical-path`).catch(() => ({ segments: [], spans: [] })),
  ]);
  const trace = body.data[0];
  const spans = trace.spans;
  const order = treeOrder(spans);
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const total = Math.max(1, end - start);
  const service = (s) => trace.processes[s.processID].serviceName;
  const services = [...new Set(spans.map(service))];
  const onPath = new Map(critical.spans.map((c) => [c.span_id, c.critical_ms]));
  const segments = new Map();
  for (const seg of critical.segments) {
    if (!segments.has(seg.span_id)) segments.set(seg.span_id, []);
    segments.get(seg.span_id).push(seg);
  }
  const json = el("button", { type: "button", id: "download" }, "Download JSON");
  json.addEventListener("click", () => download(`trace-${trace.traceID}.json`, JSON.stringify(body, null, 2)));
  const explain = el("a", { href: `/explain?trace=${trace.traceID}`, "data-link": "", id: "explain-trace", class: "button" }, "Why is it slower?");
  const head = el("div", { class: "trace-head" },
    el("h2", {}, `Trace ${trace.traceID}`),
    el("span", {}, el("b", { id: "span-count" }, spans.length), " spans"),
    el("span", {}, `${services.length} services`),
    el("span", {}, "duration ", fmtMs(total / 1000)),
    el("span", { class: "critical-key" }, el("i", {}), " critical path"),
    json, explain,
  );
  const legend = el("div", { class: "legend" }, services.map((s) => el("span", {}, el("i", { style: `background:${colour(s)}` }), s)));
  const ticks = el("div", { class: "ticks" });
  for (let i = 0; i <= 4; i++) ticks.append(el("span", { style: `left:${i * 25}%;${i === 4 ? "transform:translateX(-100%)" : ""}` }, fmtMs((total * i) / 4 / 1000)));
  const rows = document.createDocumentFragment();
  const details = el("div", { class: "panel details", id: "span-details" }, el("p", { class: "muted" }, "Click a span for its attributes, events, links and resource."));
  let selected = null;
  const byId = new Map();
  for (const [s, depth] of order) {
    const left = ((s.startTime - start) / total) * 100;
    const width = (s.duration / total) * 100;
    const failed = isError(s);
    const track = el("div", { class: "track" },
      el("div", { class: "bar" + (failed ? " error" : ""), style: `left:${left}%;width:${width}%;background:${colour(service(s))}` }),
      el("span", { class: "dur", style: `left:calc(${Math.min(left + width, 92)}% + 4px)` }, fmtMs(s.duration / 1000)));
    for (const seg of segments.get(s.spanID) || []) {
      track.append(el("div", { class: "critical", title: "on the critical path", style: `left:${((seg.start_us - start) / total) * 100}%;width:${((seg.end_us - seg.start_us) / total) * 100}%` }));
    }
    const row = el("div", { class: "row" + (onPath.has(s.spanID) ? " on-path" : ""), "data-span-id": s.spanID },
      el("div", { class: "label", style: `padding-left:${4 + depth * 12}px`, title: `${service(s)}: ${s.operationName}` },
        failed ? el("span", { class: "err-mark" }, "!") : null,
        el("span", { class: "svc" }, service(s)), " ", s.operationName),
      track);
    const select = () => {
      if (selected) selected.classList.remove("selected");
      selected = row;
      row.classList.add("selected");
      details.replaceChildren(spanDetails(s, trace.processes[s.processID], onPath.get(s.spanID)));
    };
    row.addEventListener("click", () => {
      select();
      history.replaceState(null, "", `/trace/${trace.traceID}?span=${s.spanID}`);
    });
    byId.set(s.spanID, [row, select]);
    rows.append(row);
  }
  const waterfall = el("div", { class: "waterfall", id: "waterfall" }, ticks);
  waterfall.append(rows);
  app.replaceChildren(traceIdBox(), head, legend, waterfall, details);
  const deep = params.get("span");
  if (deep && byId.has(deep)) {
    const [row, select] = byId.get(deep);
    select();
    row.scrollIntoView({ block: "center" });
  }
}

// A box to open a trace by id, on every trace page and in the header.
function traceIdBox() {
  const box = el("input", { id: "trace-id", placeholder: "trace id", size: 34 });
  const form = el("form", { class: "trace-id-form" }, box, el("button", { type: "submit", id: "open-trace" }, "Open trace"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    openTrace(box);
  });
  return form;
}

function kvTable(title, items) {
  return el("div", {},
    el("h3", {}, title),
    items.length
      ? el("table", {}, items.map((t) => el("tr", {}, el("td", {}, t.key), el("td", { class: "value" }, typeof t.value === "object" ? JSON.stringify(t.value) : String(t.value)))))
      : el("p", { class: "muted" }, "none"));
}

function spanDetails(span, process, criticalMs) {
  const links = (span.references || []).filter((r) => r.refType === "FOLLOWS_FROM");
  const parent = (span.references || []).find((r) => r.refType === "CHILD_OF");
  return el("div", {},
    el("h2", {}, `${process.serviceName}: ${span.operationName}`),
    el("p", { class: "muted" }, `span ${span.spanID} · start ${fmtTime(span.startTime)} · duration ${fmtMs(span.duration / 1000)}`,
      criticalMs !== undefined ? ` · ${fmtMs(criticalMs)} on the critical path` : "",
      " · ", el("a", { href: `/trace/${span.traceID}?span=${span.spanID}`, "data-link": "", id: "span-link" }, "link to this span"),
      parent ? [" · parent ", el("a", { href: `/trace/${parent.traceID}?span=${parent.spanID}`, "data-link": "" }, parent.spanID)] : null),
    kvTable("Attributes", span.tags || []),
    el("div", {}, el("h3", {}, "Events"),
      (span.logs || []).length
        ? el("table", { id: "events" }, span.logs.map((l) => el("tr", {},
          el("td", { class: "offset" }, "+" + ((l.timestamp - span.startTime) / 1000).toFixed(3) + " ms"),
          el("td", { class: "value" }, l.fields.map((f) => `${f.key}=${f.value}`).join("\n")))))
        : el("p", { class: "muted" }, "none")),
    el("div", {}, el("h3", {}, "Links"),
      links.length
        ? el("ul", { id: "links" }, links.map((r) => el("li", {}, el("a", { href: `/trace/${r.traceID}?span=${r.spanID}`, "data-link": "", class: "span-link" }, `trace ${r.traceID} span ${r.spanID}`))))
        : el("p", { class: "muted" }, "none")),
    kvTable("Resource", [{ key: "service.name", value: process.serviceName }, ...(process.tags || [])]),
  );
}

// ---------- compare ----------

// Two traces side by side: spans matched by service, operation and
// occurrence; spans only one has and large duration changes marked.
async function comparePage() {
  const params = new URLSearchParams(location.search);
  const [a, b] = [params.get("a"), params.get("b")];
  const load = async (id) => (await api(`/api/traces/${encodeURIComponent(id)}`)).data[0];
  const [ta, tb] = await Promise.all([load(a), load(b)]);
  const keyed = (trace) => {
    const seen = new Map();
    const out = new Map();
    for (const [s, depth] of treeOrder(trace.spans)) {
      const base = `${trace.processes[s.processID].serviceName}\u001f${s.operationName}`;
      const n = (seen.get(base) || 0) + 1;
      seen.set(base, n);
      out.set(`${base}\u001f${n}`, [s, depth]);
    }
    return out;
  };
  const ka = keyed(ta), kb = keyed(tb);
  const keys = [...ka.keys()];
  for (const k of kb.keys()) if (!ka.has(k)) keys.push(k);
  const rows = keys.map((k) => {
    const [service, operation] = k.split("\u001f");
    const sa = ka.get(k), sb = kb.get(k);
    const da = sa ? sa[0].duration / 1000 : null, db = sb ? sb[0].duration / 1000 : null;
    let status = "same";
    if (!sa) status = "only-b";
    else if (!sb) status = "only-a";
    else if (db > da * 1.2 + 1) status = "slower";
    else if (da > db * 1.2 + 1) status = "faster";
    const depth = (sa || sb)[1];
    const label = { "only-a": "only in A", "only-b": "only in B", slower: "slower in B", faster: "faster in B", same: "" }[status];
    return el("tr", { class: "cmp " + status },
      el("td", { style: `padding-left:${4 + depth * 12}px` }, el("b", {}, service), " ", operation),
      el("td", { class: "num" }, fmtMs(da)), el("td", { class: "num" }, fmtMs(db)),
      el("td", { class: "num" }, da !== null && db !== null ? (db - da >= 0 ? "+" : "") + fmtMs(db - da) : ""),
      el("td", {}, label));
  });
  const duration = (t) => fmtMs((Math.max(...t.spans.map((s) => s.startTime + s.duration)) - Math.min(...t.spans.map((s) => s.startTime))) / 1000);
  app.replaceChildren(
    el("div", { class: "panel" }, el("h2", {}, "Compare traces"),
      el("p", {}, "A ", el("a", { href: `/trace/${ta.traceID}`, "data-link": "" }, ta.traceID), ` (${ta.spans.length} spans, ${duration(ta)}) · B `,
        el("a", { href: `/trace/${tb.traceID}`, "data-link": "" }, tb.traceID), ` (${tb.spans.length} spans, ${duration(tb)})`)),
    el("table", { id: "comparison" },
      el("tr", {}, el("th", {}, "Span"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B"), el("th", { class: "num" }, "B − A"), el("th", {}, "")),
      rows));
}

// ---------- explain ----------

// Why is it slower? One trace against the typical trace of its operation,
// or a service's requests now against a baseline window.
async function explainPage() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const key of ["trace", "service", "operation", "since", "start", "end", "baseline_since", "baseline_until"]) if (params.get(key)) query.set(key, params.get(key));
  const form = el("form", { class: "filters", id: "explain-form" });
  const input = (name, label, placeholder) => el("label", {}, label, el("input", { name, id: "explain-" + name, placeholder, value: params.get(name) || "" }));
  form.append(input("service", "Service", "productpage"), input("operation", "Operation", "all"), input("since", "Now: last", "15m"),
    input("baseline_since", "Against: from", "1h"), input("baseline_until", "to (ago)", "15m"), el("button", { type: "submit" }, "Explain"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    navigate("/explain?" + next.toString());
  });
  if (!query.has("trace") && !(query.has("service") && query.has("baseline_since"))) {
    app.replaceChildren(form, el("p", { class: "muted" }, "Pick a service and two windows, or open a trace and ask why it is slower."));
    return;
  }
  const body = await api("/api/v1/explain?" + query.toString());
  const side = (s) => `${s.requests} request${s.requests === 1 ? "" : "s"}, mean ${fmtMs(s.mean_ms)}`;
  const max = Math.max(1e-9, ...body.hops.map((h) => Math.abs(h.added_ms)));
  const title = body.mode === "trace"
    ? [`Trace ${body.current.trace_id} (${fmtMs(body.current.mean_ms)}) against the typical ${body.service}: ${body.operation} (${side(body.baseline)})`]
    : [`${body.service}${body.operation ? " " + body.operation : ""}: now ${side(body.current)}, before ${side(body.baseline)}`];
  app.replaceChildren(form,
    el("div", { class: "panel" }, el("h2", {}, "Why is it slower?"), el("p", {}, title),
      el("p", { id: "explain-answer" }, body.services.length ? ["Most added by ", el("b", {}, body.services[0][0]), ` (+${fmtMs(body.services[0][1])} on the critical path)`] : "Nothing to compare.")),
    el("table", { id: "explain" },
      el("tr", {}, el("th", {}, "Service"), el("th", {}, "Operation"), el("th", { class: "num" }, "Added"), el("th", { class: "num" }, "Now"), el("th", { class: "num" }, "Before"), el("th", {}, "")),
      body.hops.map((h) => el("tr", { class: "hop" },
        el("td", {}, h.service), el("td", {}, h.operation),
        el("td", { class: "num" + (h.added_ms > 0 ? " error-text" : "") }, (h.added_ms >= 0 ? "+" : "−") + fmtMs(Math.abs(h.added_ms))),
        el("td", { class: "num" }, fmtMs(h.current_ms)), el("td", { class: "num" }, fmtMs(h.baseline_ms)),
        el("td", { class: "bar-cell" }, el("div", { class: "added" + (h.added_ms < 0 ? " less" : ""), style: `width:${(Math.abs(h.added_ms) / max) * 100}%` }))))));
}

// ---------- services ----------

function lineChart(id, title, series, unit, [x0, x1]) {
  const w = 420, h = 200, pad = 48, bottom = 34;
  const points = series.flatMap((s) => s.points);
  const chart = svg("svg", { id, class: "chart", viewBox: `0 0 ${w} ${h}`, width: "100%", height: h, "data-points": points.length });
  const y1 = Math.max(...points.map((p) => p[1]), 0) || 1;
  const x = (v) => pad + ((v - x0) / Math.max(1, x1 - x0)) * (w - pad - 10);
  const y = (v) => h - bottom - (v / y1) * (h - bottom - 16);
  chart.append(svg("line", { class: "axis", x1: pad, y1: h - bottom, x2: w - 10, y2: h - bottom }));
  chart.append(svg("line", { class: "axis", x1: pad, y1: 10, x2: pad, y2: h - bottom }));
  chart.append(svg("text", { x: 2, y: 18, class: "y-label" }, unit(y1)));
  chart.append(svg("text", { x: 2, y: h - bottom }, unit(0)));
  // Time axis: five absolute clock labels over the range.
  for (let i = 0; i <= 4; i++) {
    const t = x0 + ((x1 - x0) * i) / 4;
    chart.append(svg("line", { class: "tick", x1: x(t), y1: h - bottom, x2: x(t), y2: h - bottom + 4 }));
    chart.append(svg("text", { class: "x-label", x: x(t), y: h - bottom + 16, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, fmtClock(t, x1 - x0)));
  }
  chart.append(svg("text", { class: "axis-title", x: (w + pad) / 2, y: h - 3, "text-anchor": "middle" }, "time"));
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    chart.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2, class: "line" }));
    if (s.points.length < 30) for (const p of s.points) chart.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: s.colour }));
  }
  const legend = el("div", { class: "legend" }, series.map((s) => el("span", {}, el("i", { style: `background:${s.colour}` }), s.name)));
  return el("div", { class: "panel" }, el("h2", {}, title), chart, legend);
}

const VIEWS = [["inbound", "Requests served (inbound)"], ["outbound", "Calls made (outbound)"]];

async function servicesPage() {
  const params = new URLSearchParams(location.search);
  const services = (await api("/api/services")).data || [];
  const service = params.get("service") || services[0];
  const select = el("select", { id: "overview-service", name: "service" }, services.map((s) => el("option", { value: s }, s)));
  const view = el("select", { id: "overview-kind", name: "kind" }, VIEWS.map(([v, label]) => el("option", { value: v }, label)));
  view.value = params.get("kind") || "inbound";
  const range = rangePicker(params);
  select.value = service || "";
  const bar = el("form", { class: "filters", id: "overview-form" }, el("label", {}, "Service", select), el("label", {}, "Counting", view), range.node, range.absolute,
    el("button", { type: "submit", id: "overview-go" }, "Show"));
  bar.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams({ service: select.value, kind: view.value });
    range.write(next);
    navigate("/services?" + next.toString());
  });
  for (const input of [select, view]) input.addEventListener("change", () => bar.requestSubmit());
  if (!service) {
    app.replaceChildren(bar, el("p", { class: "muted" }, "No spans stored yet."));
    return;
  }
  const q = rangeParams(params);
  q.set("service", service);
  q.set("kind", view.value);
  // About 60 steps over the range.
  const fromUs = params.get("start") ? Number(params.get("start")) : null;
  const toUs = params.get("end") ? Number(params.get("end")) : Date.now() * 1000;
  const sinceMs = { "15m": 9e5, "1h": 3.6e6, "6h": 2.16e7, "24h": 8.64e7, "48h": 1.728e8 }[params.get("since") || "1h"] || 3.6e6;
  const spanMs = fromUs !== null ? Math.max(60000, (toUs - fromUs) / 1000) : sinceMs;
  const step = Math.max(1, Math.round(spanMs / 60 / 1000)) + "s";
  const [series, red] = await Promise.all([api(`/api/v1/series?${q}&step=${step}`), api(`/api/v1/red?${q}&by_operation=true`)]);
  const pts = series.series[0] ? series.series[0].points : [];
  const line = (name, colourValue, key) => ({ name, colour: colourValue, points: pts.filter((p) => p[key] !== null).map((p) => [p.t_ms, p[key]]) });
  const domain = [pts.length ? pts[0].t_ms : 0, pts.length ? pts[pts.length - 1].t_ms : 1];
  const outbound = view.value === "outbound";
  const charts = el("div", { class: "charts", id: "charts" },
    lineChart("chart-rate", outbound ? "Call rate" : "Request rate", [line("req/s", "#2f6fde", "rate")], (v) => v.toFixed(2) + "/s", domain),
    lineChart("chart-errors", "Errors (5xx, local failures) and 4xx", [line("errors", "#c62828", "error_rate"), line("4xx", "#ef6c00", "client_error_rate")], (v) => (v * 100).toFixed(1) + "%", domain),
    lineChart("chart-latency", "Latency", [line("p50", "#2e7d32", "p50_ms"), line("p95", "#ef6c00", "p95_ms"), line("p99", "#c62828", "p99_ms")], fmtMs, domain),
  );
  const counted = el("p", { class: "counted", id: "counted" }, "Counting ", red.counted.spans, `, ${new Date(red.counted.start_us / 1000).toLocaleString()} to ${new Date(red.counted.end_us / 1000).toLocaleString()}.`);
  const explain = el("a", { href: `/explain?service=${encodeURIComponent(service)}&since=15m&baseline_since=1h&baseline_until=15m`, "data-link": "", class: "button", id: "explain-service" }, "Why is it slower?");
  const table = el("table", { id: "operations" },
    el("tr", {}, el("th", {}, "Operation"), el("th", { class: "num" }, "Calls"), el("th", { class: "num" }, "Req/s"), el("th", { class: "num" }, "Error rate"), el("th", { class: "num" }, "4xx"), el("th", { class: "num" }, "p50"), el("th", { class: "num" }, "p95"), el("th", { class: "num" }, "p99")),
    red.rows.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `/search?service=${encodeURIComponent(service)}&operation=${encodeURIComponent(r.operation)}&${rangeParams(params)}`, "data-link": "" }, r.operation)),
      el("td", { class: "num" }, r.calls), el("td", { class: "num" }, r.rate.toFixed(3)),
      el("td", { class: "num" + (r.errors ? " error-text" : "") }, (r.error_rate * 100).toFixed(2) + "%"),
      el("td", { class: "num" }, (r.client_error_rate * 100).toFixed(2) + "%"),
      el("td", { class: "num" }, fmtMs(r.latency.p50_ms)), el("td", { class: "num" }, fmtMs(r.latency.p95_ms)), el("td", { class: "num" }, fmtMs(r.latency.p99_ms)))));
  app.replaceChildren(bar, counted, charts, el("div", { class: "panel" }, el("h2", {}, "Operations ", explain), table));
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
  // Past its bound the graph keeps the most called edges: say so.
  const cut = body.omitted_calls
    ? el("p", { id: "edges-cut", class: "muted" }, `Showing the ${body.max_edges} most called edges: ${body.omitted_calls} calls on other edges are left out.`)
    : null;
  app.replaceChildren(el("div", { class: "panel" }, el("h2", {}, "Service dependencies (last 48h)"), cut, edges.length ? graph : el("p", { class: "muted" }, "No calls between services yet."), table));
}

// ---------- routing ----------

async function route() {
  const path = location.pathname;
  delete document.body.dataset.ready;
  app.replaceChildren(el("p", { class: "muted" }, "loading…"));
  try {
    if (path.startsWith("/trace/")) await tracePage(decodeURIComponent(path.slice(7)));
    else if (path === "/services") await servicesPage();
    else if (path === "/compare") await comparePage();
    else if (path === "/explain") await explainPage();
    else if (path === "/dependencies") await dependenciesPage();
    else await searchPage();
    document.body.dataset.ready = path;
  } catch (error) {
    showError(error);
    document.body.dataset.ready = "error";
  }
}

document.getElementById("header-trace").addEventListener("submit", (event) => {
  event.preventDefault();
  openTrace(document.getElementById("header-trace-id"));
});

route();
