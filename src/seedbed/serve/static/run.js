// One run, live: a snapshot, then only the rows that landed since; charts extend in place.
"use strict";
const RUN = param("path");
const state = {series: {}, events: [], checkpoints: [], status: null, meta: {}};
const charts = new Map();
let drawing = false;

// which chart a series goes on: losses together, each observer family together, everything else alone
function group(name) {
  if (/^(train|eval)\/.*loss$/.test(name)) return "loss";
  const parts = name.split("/");
  if (parts[0] === "time") return "time";
  if (parts[0] === "watch" && parts.length > 2) return parts.slice(0, 2).join("/");
  return name;
}
function order(g) { return g === "loss" ? "0" : g.startsWith("watch/") ? "1" + g : g === "time" ? "3" : "2" + g; }

function redraw() {
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => {
    drawing = false;
    const groups = new Map();
    for (const name of Object.keys(state.series).sort()) {
      const g = group(name);
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(name);
    }
    const marks = {events: state.events.filter(e => e.kind === "emergence"), checkpoints: state.checkpoints, now: null};
    const box = document.getElementById("charts");
    for (const g of [...groups.keys()].sort((a, b) => order(a).localeCompare(order(b)))) {
      if (!charts.has(g)) charts.set(g, new StepChart(box, g, g === "loss" ? "loss" : g));
      charts.get(g).set(state.series, groups.get(g), marks);
    }
    showEvents();
    const steps = state.checkpoints.length ? state.checkpoints[state.checkpoints.length - 1] : 0;
    document.getElementById("progress").textContent =
      `${state.checkpoints.length} checkpoints · step ${steps.toLocaleString("en")}` + (state.meta.total ? ` of ${state.meta.total.toLocaleString("en")}` : "");
    window.seedbedDrawn = Date.now();
  });
}

function showEvents() {
  const list = document.getElementById("events");
  if (list.children.length === state.events.length) return;
  list.replaceChildren(...state.events.map(e => el("li", {class: e.kind, "data-kind": e.kind, "data-step": e.step},
    `step ${e.step.toLocaleString("en")} · ${e.kind}: ${e.text}`)));
}

function setStatus(s) {
  state.status = s;
  document.getElementById("status").replaceChildren(el("span", {class: "badge " + s, id: "status-badge"}, s));
}

document.getElementById("name").textContent = RUN;
document.title = "seedbed · " + RUN;
document.getElementById("inside-link").href = "/inside?path=" + encodeURIComponent(RUN);

listen("/api/run/stream?path=" + encodeURIComponent(RUN), {
  snapshot(d) {
    state.series = d.series; state.events = d.events; state.checkpoints = d.checkpoints; state.meta = d.meta;
    for (const c of charts.values()) c.box.remove();
    charts.clear();
    document.getElementById("events").replaceChildren();
    document.getElementById("problem").hidden = !d.meta.problem;
    document.getElementById("problem").textContent = d.meta.problem ?? "";
    setStatus(d.status);
    redraw();
  },
  append(d) {
    for (const [name, [xs, ys]] of Object.entries(d.series || {})) {
      const s = state.series[name] || (state.series[name] = [[], []]);
      s[0].push(...xs); s[1].push(...ys);
    }
    if (d.events) state.events.push(...d.events);
    if (d.checkpoints) state.checkpoints = d.checkpoints;
    if (d.status) setStatus(d.status);
    document.getElementById("problem").hidden = true;
    redraw();
  },
  problem(d) {
    const p = document.getElementById("problem");
    p.hidden = false; p.textContent = "this run cannot be read now: " + d.problem;
    setStatus("unreadable");
  },
});
