// Helpers shared by the pages: building elements (text only, never HTML from a run), streams, charts.
"use strict";
const PALETTE = ["#1f5fa8", "#d1621b", "#2b8a3e", "#8e44ad", "#b8860b", "#c0392b", "#16a085", "#6b7280"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
  return node;
}

function param(name) { return new URLSearchParams(location.search).get(name) || ""; }
function fmt(v, digits = 4) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

// A server-sent-events stream; the browser reconnects by itself when the server comes back.
function listen(url, handlers) {
  const source = new EventSource(url);
  for (const [kind, fn] of Object.entries(handlers)) source.addEventListener(kind, e => fn(JSON.parse(e.data)));
  return source;
}

// A chart of several series over steps, with emergence marks and checkpoint ticks drawn on top.
class StepChart {
  constructor(parent, group, title) {
    this.names = [];
    this.box = el("div", {class: "chart", "data-group": group, "data-points": "0"}, el("h3", {}, title));
    parent.append(this.box);
    this.plot = null;
    this.marks = {events: [], checkpoints: [], now: null};
  }

  set(series, names, marks) {
    this.marks = marks;
    const steps = [...new Set(names.flatMap(n => series[n][0]))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    let points = 0;
    const columns = names.map(n => {
      const col = new Array(steps.length).fill(null);
      const [xs, ys] = series[n];
      for (let i = 0; i < xs.length; i++) { col[index.get(xs[i])] = ys[i]; if (ys[i] !== null) points++; }
      return col;
    });
    const data = [steps, ...columns];
    if (!this.plot || names.join("\n") !== this.names.join("\n")) this.build(names, data, this.box.dataset.group);
    else this.plot.setData(data);
    this.box.setAttribute("data-points", String(points));
    this.box.setAttribute("data-last-step", String(steps.length ? steps[steps.length - 1] : -1));
  }

  build(names, data, group) {
    if (this.plot) this.plot.destroy();
    this.names = names.slice();
    const many = names.length > 8;
    const opts = {
      width: Math.max(300, this.box.clientWidth - 16), height: 220,
      scales: {x: {time: false}},
      legend: {show: !many},
      cursor: {drag: {x: true, y: false}},
      axes: [{label: "step"}, {size: 60}],
      series: [{label: "step"}, ...names.map((n, i) => ({
        label: group.startsWith("watch/") && n.startsWith(group + "/") ? n.slice(group.length + 1) : n.replace(/^watch\//, ""),
        stroke: PALETTE[i % PALETTE.length], width: many ? 1 : 1.5, spanGaps: true,
        points: {show: data[0].length < 40},
      }))],
      hooks: {draw: [u => this.drawMarks(u)]},
    };
    this.plot = new uPlot(opts, data, this.box);
  }

  drawMarks(u) {
    const ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
    const x = s => Math.round(u.valToPos(s, "x", true));
    const [lo, hi] = [u.scales.x.min, u.scales.x.max];
    ctx.save();
    ctx.strokeStyle = "#9aa0a6"; ctx.lineWidth = 1;
    for (const s of this.marks.checkpoints) if (s >= lo && s <= hi) {  // checkpoints: ticks on the time axis
      ctx.beginPath(); ctx.moveTo(x(s), bottom); ctx.lineTo(x(s), bottom - 6 * devicePixelRatio); ctx.stroke();
    }
    ctx.strokeStyle = "#8e44ad"; ctx.setLineDash([5, 4]); ctx.lineWidth = 1.5 * devicePixelRatio;
    for (const e of this.marks.events) if (e.step >= lo && e.step <= hi) {  // emergences: a dashed line
      ctx.beginPath(); ctx.moveTo(x(e.step), top); ctx.lineTo(x(e.step), bottom); ctx.stroke();
    }
    if (this.marks.now !== null && this.marks.now >= lo && this.marks.now <= hi) {
      ctx.strokeStyle = "#d1621b"; ctx.setLineDash([]);
      ctx.beginPath(); ctx.moveTo(x(this.marks.now), top); ctx.lineTo(x(this.marks.now), bottom); ctx.stroke();
    }
    ctx.restore();
  }
}
