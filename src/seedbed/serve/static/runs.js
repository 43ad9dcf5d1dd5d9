// The runs page: the whole table again whenever the server says it changed.
"use strict";
function badge(text) { return el("span", {class: "badge " + String(text).replace(/[^a-z-]/g, "")}, text); }
function link(href, text) { return el("a", {href}, text); }
function q(path) { return encodeURIComponent(path); }

listen("/api/runs/stream", {runs(data) {
  document.getElementById("root").textContent = data.root;
  const body = document.querySelector("#runs tbody");
  body.replaceChildren(...data.runs.map(r => el("tr", {"data-run": r.path, "data-status": r.status},
    el("td", {}, link("/run?path=" + q(r.path), r.path)),
    el("td", {}, r.soil ?? "?"),
    el("td", {class: "num"}, r.params === null ? "?" : r.params.toLocaleString("en")),
    el("td", {class: "num"}, r.steps === null ? "?" : `${r.steps.toLocaleString("en")}/${(r.total ?? 0).toLocaleString("en")}`),
    el("td", {}, badge(r.status)),
    el("td", {class: "num"}, fmt(r.loss)),
    el("td", {}, r.parent ? "from " + r.parent : ""),
    el("td", {}, r.trial ?? ""),
    el("td", {}, r.verdict ? badge(r.verdict) : ""),
    el("td", {}, r.report ? link("/report?path=" + q(r.report), "report") : ""),
    el("td", {class: "problem"}, r.problem ?? link("/inside?path=" + q(r.path), "inside")),
  )));
  document.getElementById("empty").hidden = data.runs.length > 0;
  document.querySelector("#trials tbody").replaceChildren(...data.trials.map(t => el("tr", {"data-trial": t.path},
    el("td", {}, t.path), el("td", {}, badge(t.verdict)),
    el("td", {}, t.report ? link("/report?path=" + q(t.report), "report") : ""))));
}});
