"""The report: a self-contained page with every section, figure and number; one-line errors."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import pytest

from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.report import render, report_command, run_result, write_report
from seedbed.run import Run

from conftest import tiny

NASTY = '<script>alert("x")</script> & friends'


def trial_result() -> dict:
    """A realistic trial.json, numbers made by hand: every figure kind, a gap, an unmeasured prediction."""
    steps = list(range(0, 1001, 50))
    repeated = [3.4 if s < 500 else 0.6 if s > 800 else 3.4 - 2.8 * (s - 500) / 300 for s in steps]
    first = [3.5 - 0.1 * s / 1000 for s in steps]
    first[4] = None  # a gap: the eval failed at this step
    tokens = ["<bos>", "a", "b", "$x$", "c", "\n", "a", "b", "$x$", "c"]
    n = len(tokens)
    pattern = [[(1.0 if (q >= 5 and k == q - 4) else 0.0) if q >= 5 else (1.0 / (q + 1) if k <= q else 0.0) for k in range(n)] for q in range(n)]
    return {
        "trial": "induction",
        "claim": f"A next-token predictor grows, abruptly, a circuit that copies from context {NASTY}.",
        "source": "Olsson et al. 2022, In-context Learning and Induction Heads (arXiv 2209.11895)",
        "scale": "small",
        "seed": 0,
        "prediction_written": "2026-11-21T10:00:00+00:00",
        "finished": "2026-11-21T10:03:00+00:00",
        "wall_seconds": 151.2,
        "versions": {"seedbed": "0.1.0", "torch": "2.13.0+cpu", "python": "3.13.1"},
        "conditions": {
            "main": {"name": "induction-small", "seed": 0, "architecture": {"n_layers": 2, "d_model": 64}},
            "control": {"name": "induction-control", "seed": 0, "architecture": {"n_layers": 1, "d_model": 64}},
        },
        "runs": {"main": ".", "control": "control"},
        "predictions": [
            {"id": "a", "text": "the loss on the repeated half falls abruptly", "threshold": "window < 20% of training",
             "measured": "window 10.0% of training (steps 500–800)", "held": True},
            {"id": "b", "text": f"a head with induction score > 0.5 appears {NASTY}", "threshold": "score > 0.5",
             "measured": "L1H3 0.91", "held": True},
            {"id": "c", "text": "the one-layer control grows no such head", "threshold": "max score < 0.2",
             "measured": "0.35", "held": False, "null": "chance alone gives <2x"},
            {"id": "d", "text": "the transition coincides with the ICL score's change point", "threshold": "within 100 steps",
             "measured": "no change point found", "held": None},
        ],
        "verdict": "inconclusive",
        "why": "Predictions a and b held, c did not, d could not be measured.",
        "evidence": {"transition_start": 500, "transition_end": 800, "induction_score_L1H3": 0.9123456,
                     "control_max_score": 0.35, "icl_change_point": None, "note": "made by hand"},
        "observer_cost": {"observer_seconds": 3.1, "train_seconds": 45.0, "share": 0.069},
        "emergences": [{"series": "watch/icl_score", "label": "in-context-learning score", "step": 650, "start": 500,
                        "end": 800, "before": 0.01, "after": -1.9, "size": -1.91}],
        "future_key": {"ignored": True},
        "figures": [
            {"kind": "lines", "id": "loss", "title": "loss on each half", "x_label": "step", "y_label": "nats", "log_y": True,
             "series": [{"label": "repeated half", "x": steps, "y": repeated}, {"label": "first half", "x": steps, "y": first}],
             "spans": [{"from": 500, "to": 800, "label": "transition"}], "hlines": [{"y": 0.4, "label": "threshold"}]},
            {"kind": "bars", "id": "ablation", "title": "loss after ablating each head", "y_label": "Δ nats",
             "bars": [{"label": f"L{l}H{h}", "value": 0.1 * (l + h), "highlight": (l, h) == (1, 3)} for l in range(2) for h in range(4)],
             "hlines": [{"y": 0.5, "label": "predicted"}], "main": True},
            {"kind": "heatmap", "id": "pattern-L1H3", "title": "attention of L1H3", "x_labels": tokens, "y_labels": tokens,
             "values": pattern, "x_label": "key", "y_label": "query"},
            {"kind": "table", "id": "seeds", "title": "onset by seed", "columns": ["seed", "onset"], "rows": [[0, 500], [1, 650], [2, None]]},
        ],
    }


def write_trial(run: Path, result: dict | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "trial.json").write_text(json.dumps(result or trial_result()))
    return run


def test_trial_report_is_self_contained_and_complete(tmp_path):
    result = trial_result()
    run = write_trial(tmp_path / "run", result)
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text()

    # offline: nothing to fetch, no script at all
    values = re.findall(r'[\w:-]+="([^"]*)"', page)
    assert values and not [v for v in values if "http:" in v or "https:" in v or v.startswith("//")]
    links = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert links and all(v.startswith(("#", "data:")) for v in links), links
    lowered = page.lower()
    for bad in ("<script", "<link", "@import", "url(http", "url(//", "<iframe", "<object", "<embed"):
        assert bad not in lowered, bad

    # one svg per figure, each in a <figure> with a caption
    assert page.count("<svg") == len(result["figures"]) == page.count("<figure") == page.count("<figcaption>")
    for f in result["figures"]:
        assert f'id="figure-{f["id"]}"' in page and f["title"] in page

    # the verdict, the claim, every prediction, every evidence key
    assert 'class="badge inconclusive">inconclusive<' in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; friends" in page
    assert "Olsson et al. 2022" in page
    for p in result["predictions"]:
        assert all(html.escape(p[k]) in page for k in ("text", "threshold", "measured"))
    assert "null: chance alone gives &lt;2x" in page  # a prediction's null, where the trial states one
    assert page.count("✓") == 2 and page.count("✗") == 1 and 'aria-label="could not be measured"' in page
    for key in result["evidence"]:
        assert f"<code>{key}</code>" in page
    assert "0.9123" in page and 'title="0.9123456"' in page
    assert "Watching took 3.1 s against 45.0 s of training (6.9% of the total)." in page
    assert "in-context-learning score" in page
    assert 'datetime="2026-11-21T10:00:00+00:00"' in page
    assert "torch 2.13.0+cpu" in page
    assert "mathdefault" not in page  # the log axis is labelled 0.5, 1, 2, not in mathtext
    assert "induction-control" in page and "n_layers = 1" in page  # conditions as TOML

    png = run / "report-main.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    # rerunning replaces both files, and touches nothing else
    result["verdict"] = "held"
    write_trial(run, result)
    before = sorted(p.name for p in run.iterdir())
    write_report(run)
    assert 'class="badge held">held<' in out.read_text()
    assert sorted(p.name for p in run.iterdir()) == before
    assert report_command(run) == out


def test_render_is_deterministic_and_ids_do_not_collide():
    result = trial_result()
    page = render(result)
    assert page == render(result)
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "two elements share an id"
    refs = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', page)
    assert refs and all((a or b) in ids for a, b in refs), "a reference to a missing id"


def test_main_figure_defaults_to_the_first(tmp_path):
    result = trial_result()
    for f in result["figures"]:
        f.pop("main", None)
    result["figures"] = result["figures"][3:] + result["figures"][:3]  # a table first: it draws, too
    write_report(write_trial(tmp_path / "run", result))
    assert (tmp_path / "run" / "report-main.png").read_bytes()[:4] == b"\x89PNG"


def test_minimal_trial_json(tmp_path):
    """Only a name: every section it lacks is left out, nothing raises."""
    page = write_report(write_trial(tmp_path / "run", {"trial": "bare"})).read_text()
    assert "<h1>bare" in page and "<svg" not in page
    assert not (tmp_path / "run" / "report-main.png").exists()


def test_plain_run_report(tmp_path):
    run = grow(tiny(), runs_dir=tmp_path / "runs", progress=False)
    run.close()
    path = tmp_path / "runs" / "tiny"
    r = Run.open(path)
    for step in (10, 20, 30, 40):
        r.log_metrics(step, {"watch/icl_score": -0.05 * step, "watch/induction/L1H0": step / 40, "watch/induction/L1H1": 0.1})
    r.commit()
    r.log_event(20, "emergence", json.dumps({"series": "watch/icl_score", "step": 20, "size": -1.5}))
    r.log_event(30, "emergence", "a plain-text emergence")
    assert {"train/loss", "eval/loss", "watch/icl_score", "watch/induction/L1H0"} <= set(r.metric_names())
    assert r.metric_names() == sorted(r.metric_names())
    r.close()

    result = run_result(path)
    figures = {f["title"]: f for f in result["figures"]}
    assert list(figures) == ["loss", "watch/icl_score", "watch/induction"]
    assert [s["label"] for s in figures["loss"]["series"]] == ["training", "held-out"]
    assert [s["label"] for s in figures["watch/induction"]["series"]] == ["L1H0", "L1H1"]
    assert figures["watch/induction"]["series"][0]["y"] == [0.25, 0.5, 0.75, 1.0]
    assert len(figures["loss"]["series"][0]["x"]) == 40

    page = write_report(path).read_text()
    assert page.count("<svg") == 3
    assert "a plain run, not a trial" in page and 'class="badge none">no verdict<' in page
    assert 'id="prediction"' not in page and 'id="claim"' not in page
    assert "a plain-text emergence" in page and "watch/icl_score" in page
    assert "<code>eval/loss</code>" in page
    assert "[architecture]" in page  # conditions.toml as written
    assert (path / "report-main.png").read_bytes()[:4] == b"\x89PNG"


def one_line_error(path: Path) -> str:
    with pytest.raises(SeedbedError) as err:
        write_report(path)
    msg = str(err.value)
    assert "\n" not in msg and ": " in msg
    return msg


def test_errors_are_one_line(tmp_path):
    assert "does not exist" in one_line_error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "neither trial.json nor run.sqlite" in one_line_error(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_line_error(tmp_path / "file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "trial.json").write_text('{"trial": "x",\n  "verdict": ')
    assert "not valid JSON" in one_line_error(bad)
    (bad / "trial.json").write_text("[1, 2]")
    assert "JSON object" in one_line_error(bad)
    (bad / "trial.json").write_text(json.dumps({"trial": "x", "figures": [{"kind": "pie", "id": "p"}]}))
    assert "unknown kind 'pie'" in one_line_error(bad)
    assert sorted(p.name for p in bad.iterdir()) == ["trial.json"]  # nothing written on failure


def test_numbers_are_formatted_for_reading():
    from seedbed.report import fmt

    assert [fmt(v) for v in (None, True, 3000, 45.0, 0.9123456, 12345.678, 0.00012, math.nan)] == [
        "–", "true", "3,000", "45", "0.9123", "12,345.7", "1.200e-04", "nan"
    ]
