// Inside at any checkpoint: pick a step, a layer and a head; the server computes (once) with seedbed.read.
"use strict";
const RUN = param("path");
const KINDS = ["previous_token", "induction", "duplicate_token"];
let checkpoints = [], current = null, overChart = null, over = null, asked = 0;
const $ = id => document.getElementById(id);

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.problem || r.statusText);
  return body;
}

function problem(text) { $("problem").hidden = !text; $("problem").textContent = text || ""; }

async function showStep() {
  const step = checkpoints[Number($("step").value)];
  if (step === undefined) return;
  $("step-label").textContent = "step " + step.toLocaleString("en");
  const mine = ++asked;
  $("busy").textContent = "reading…";
  try {
    const data = await getJSON(`/api/inside?path=${encodeURIComponent(RUN)}&step=${step}`);
    if (mine !== asked) return;  // a later step was asked for meanwhile
    current = data;
    fillHeads(data);
    drawPattern(); fillScores(); drawOver();
    problem("");
  } catch (e) { problem("cannot read step " + step + ": " + e.message); }
  if (mine === asked) $("busy").textContent = "";
}

function fillHeads(d) {
  for (const [id, n] of [["layer", d.n_layers], ["head", d.n_heads]]) {
    const sel = $(id);
    if (sel.options.length === n) continue;
    const keep = Math.min(Number(sel.value) || 0, n - 1);
    sel.replaceChildren(...Array.from({length: n}, (_, i) => el("option", {value: i}, i)));
    sel.value = keep;
  }
}

function drawPattern() {
  const d = current, l = Number($("layer").value), h = Number($("head").value);
  const p = d.patterns[l][h], n = d.tokens.length, canvas = $("pattern"), ctx = canvas.getContext("2d");
  const margin = 44, cell = Math.max(2, Math.floor((canvas.width - margin) / n));
  ctx.fillStyle = "white"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
    const v = Math.max(0, Math.min(1, p[q][k]));
    ctx.fillStyle = `rgb(${Math.round(255 - 224 * v)},${Math.round(255 - 160 * v)},${Math.round(255 - 87 * v)})`;
    ctx.fillRect(margin + k * cell, margin + q * cell, cell, cell);
  }
  ctx.fillStyle = "#444"; ctx.font = `${Math.min(10, cell)}px sans-serif`;
  if (cell >= 7) d.tokens.forEach((t, i) => {
    ctx.textAlign = "right"; ctx.fillText(t, margin - 3, margin + i * cell + cell * 0.8);
    ctx.save(); ctx.translate(margin + i * cell + cell * 0.8, margin - 3); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillText(t, 0, 0); ctx.restore();
  });
  $("pattern-caption").textContent = `attention of L${l}H${h} at step ${d.step} on a held-out example (rows: query, columns: key)`;
  Object.assign(canvas.dataset, {step: d.step, layer: l, head: h, tokens: n});
}

function fillScores() {
  const d = current, l = Number($("layer").value), h = Number($("head").value), rows = [];
  for (let i = 0; i < d.n_layers; i++) for (let j = 0; j < d.n_heads; j++) {
    const row = el("tr", {"data-head": `L${i}H${j}`, class: i === l && j === h ? "picked" : null},
      el("td", {}, `L${i}H${j}`), ...KINDS.map(k => el("td", {class: "num"}, d.scores[k] ? fmt(d.scores[k][i][j], 3) : "–")));
    row.onclick = () => { $("layer").value = i; $("head").value = j; drawPattern(); fillScores(); };
    rows.push(row);
  }
  $("scores").querySelector("tbody").replaceChildren(...rows);
}

async function loadOver() {
  try { over = await getJSON(`/api/scores?path=${encodeURIComponent(RUN)}`); drawOver(); }
  catch (e) { problem("scores over training: " + e.message); }
}

function drawOver() {
  if (!over || !current) return;
  const kind = $("kind").value, series = {}, names = [];
  if (!over[kind].length || !over[kind][0]) return;
  for (let i = 0; i < current.n_layers; i++) for (let j = 0; j < current.n_heads; j++) {
    const name = `L${i}H${j}`;
    names.push(name);
    series[name] = [over.steps, over[kind].map(m => m === null ? null : m[i][j])];
  }
  if (!overChart) overChart = new StepChart($("over"), "scores", kind);
  overChart.box.querySelector("h3").textContent = kind.replace("_", "-") + " score of each head, at each checkpoint";
  overChart.set(series, names, {events: [], checkpoints: [], now: current.step});
}

$("run-link").textContent = RUN;
$("run-link").href = "/run?path=" + encodeURIComponent(RUN);
$("step").oninput = showStep;
$("layer").onchange = $("head").onchange = () => { drawPattern(); fillScores(); };
$("kind").onchange = drawOver;

// the checkpoints come live from the run's stream: the slider grows with the run
function setCheckpoints(list) {
  const atEnd = Number($("step").value) === checkpoints.length - 1;
  const first = checkpoints.length === 0;
  checkpoints = list;
  $("step").max = Math.max(0, list.length - 1);
  if (first || atEnd) { $("step").value = list.length - 1; if (list.length) showStep(); }
  if (first && list.length) loadOver();
}
listen("/api/run/stream?path=" + encodeURIComponent(RUN), {
  snapshot(d) { setCheckpoints(d.checkpoints); },
  append(d) { if (d.checkpoints) setCheckpoints(d.checkpoints); },
  problem(d) { problem("this run cannot be read now: " + d.problem); },
});
