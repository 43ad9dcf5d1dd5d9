"""Trials: the verdict logic on hand-made evidence, and the induction trial end to end at `tiny`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, tiny

from seedbed.errors import SeedbedError
from seedbed.trials import REGISTRY, Check, Evidence, get, verdict
from seedbed.trials.base import parse_options
from seedbed.trials.induction import Induction
from seedbed.trials.runner import check_grown, replicate_seeds, summarise, wilson


def test_verdict_comes_from_the_checks_alone():
    assert verdict([Check("a", "", True), Check("b", "", True)]) == "held"
    assert verdict([Check("a", "", True), Check("b", "", False)]) == "did not hold"
    assert verdict([Check("a", "", True), Check("b", "", None)]) == "inconclusive"
    assert verdict([Check("a", "", None), Check("b", "", False)]) == "did not hold"
    assert verdict([]) == "inconclusive"


def test_a_check_holds_exactly_true_false_or_none():
    """numpy comparisons give numpy bools: np.False_ is a failure, not "could not tell"; anything else is a bug."""
    c = Check("a", "", np.float64(0.3) > 0.5)
    assert c.held is False and verdict([c]) == "did not hold"
    assert Check("a", "", np.True_).held is True
    for bad in (1, 0, "yes", 0.0, np.float64(1.0)):
        with pytest.raises(TypeError, match="True, False or None"):
            Check("a", "", bad)


def _evidence(**over) -> Evidence:
    """Numbers as the induction trial measures them, for a run where everything held."""
    n = {
        "steps": 3000, "transition_start": 450, "transition_end": 750, "transition_window_share": 0.1,
        "repeated_loss_before": 3.5, "repeated_loss_after": 0.7, "repeated_loss_final": 0.2,
        "first_induction_step": 550, "first_previous_token_step": 800,
        "top_induction_head": "L1H3", "top_previous_token_head": "L0H3", "induction_L1H3": 0.9, "previous_token_L0H3": 0.9,
        "k_composition_top_pair": 0.28, "k_composition_random_q99": 0.2, "k_composition_random_mean": 0.12,
        "induction_heads": "L1H0, L1H3", "ablate_induction_heads_rise": 3.0, "outside_heads": 2, "ablate_outside_max_rise": 0.3,
        "control_max_induction": 0.05, "control_repeated_loss_final": 3.0,
    }
    n.update(over)
    return Evidence(numbers=n)


def _held(**over) -> dict[str, bool | None]:
    return {c.id: c.held for c in Induction().judge(_evidence(**over))}


def test_induction_judge_holds_on_good_evidence():
    assert _held() == {"a": True, "b": True, "c": True, "d": True, "e": True}


@pytest.mark.parametrize(
    "over, failed",
    [
        ({"transition_window_share": 0.25}, "a"),
        ({"first_previous_token_step": 1000}, "b"),  # window 450–750 widened by 150: 300–900
        ({"first_induction_step": None}, "b"),
        ({"k_composition_top_pair": 0.19}, "c"),
        ({"previous_token_L0H3": 0.3}, "c"),
        ({"ablate_induction_heads_rise": 0.9, "ablate_outside_max_rise": 0.1}, "d"),
        ({"ablate_outside_max_rise": 0.8}, "d"),  # more than a quarter of 3.0
        ({"ablate_induction_heads_rise": None}, "d"),
        ({"control_max_induction": 0.25}, "e"),
        ({"control_repeated_loss_final": 1.1}, "e"),  # not 1 nat above the 2-layer model's 0.2
    ],
)
def test_induction_judge_fails_the_prediction_the_evidence_breaks(over, failed):
    held = _held(**over)
    assert held[failed] is False
    assert all(v for k, v in held.items() if k != failed)


def test_no_transition_fails_a():
    ev = _evidence()
    for k in ("transition_start", "transition_end", "transition_window_share"):
        del ev.numbers[k]
    held = {c.id: c.held for c in Induction().judge(ev)}
    assert held["a"] is False


def test_every_trial_declares_what_a_trial_must():
    for name, cls in REGISTRY.items():
        t = get(name)
        assert t.claim and t.source and t.predictions
        for scale in ("tiny", "small", "full"):
            runs = t.conditions(scale, seed=3)
            if runs == {}:  # a trial of worlds and agents (power) grows no transformer: its measure computes everything
                continue
            assert "main" in runs and runs["main"].seed == 3 and all(c.seed >= 3 for c in runs.values())


def test_unknown_trial_scale_and_taken_folder_are_one_line(tmp_path: Path):
    r = cli("trial", "nope", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "induction" in r.stderr
    r = cli("trial", "induction", "--scale", "huge", cwd=tmp_path)
    assert r.returncode == 2 and "tiny, small, full" in r.stderr
    (tmp_path / "taken").mkdir()
    r = cli("trial", "induction", "--scale", "tiny", "--out", "taken", cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    r = cli("report", "missing", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_options_are_declared_whole_numbers():
    assert parse_options(["n=5", "m = 2"]) == {"n": 5, "m": 2}
    for bad in ("n", "n=", "=3", "n=five", "n=2.5"):
        with pytest.raises(SeedbedError, match="NAME=WHOLE_NUMBER"):
            parse_options([bad])
    with pytest.raises(SeedbedError, match="has no option 'n': it takes none"):
        get("induction", {"n": 3})
    with pytest.raises(SeedbedError, match="whole number ≥ 2"):
        get("seeds", {"n": 1})
    assert get("seeds", {"n": 3}).chosen == {"n": 3} and get("seeds").chosen == {"n": None}


def test_replicates_never_share_a_seed():
    assert replicate_seeds(get("induction"), "small", 3, 4) == [3, 4, 5, 6]
    assert replicate_seeds(get("seeds", {"n": 3}), "small", 10, 3) == [10, 13, 16]  # 10–12, 13–15, 16–18
    assert replicate_seeds(get("seeds"), "small", 0, 2) == [0, 5]


def test_wilson_interval():
    assert wilson(8, 10) == (0.4902, 0.9433)  # the textbook value
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


def _seed_result(seed: int, held: bool | None) -> dict:
    v = {True: "held", False: "did not hold", None: "inconclusive"}[held]
    return {"seed": seed, "verdict": v, "why": "", "wall_seconds": 1.0, "predictions": [{"id": "a", "held": held}]}


@pytest.mark.parametrize("marks, expected", [
    ([True] * 8 + [False] * 2, "held"),  # 8 of 10 ≥ 80%
    ([True] * 7 + [False] * 3, "did not hold"),
    ([True] * 7 + [None] + [False] * 2, "inconclusive"),  # the inconclusive seed could have made 8
    ([True] * 4 + [False], "held"),  # 4 of 5
    ([True] * 3 + [None] * 2, "inconclusive"),
])
def test_verdict_across_seeds_comes_from_the_written_rate(marks, expected):
    pre = {"holds_on": 0.8, "predictions": [{"id": "a", "text": "t", "threshold": "x"}], "prediction_written": "2026-01-01T00:00:00+00:00"}
    s = summarise(pre, [_seed_result(i, m) for i, m in enumerate(marks)])
    assert s["verdict"] == expected
    p = s["predictions"][0]
    assert (p["held"], p["did_not_hold"], p["unmeasured"]) == (marks.count(True), marks.count(False), marks.count(None))
    assert p["wilson95"] == list(wilson(marks.count(True), len(marks)))
    assert [r["report"] for r in s["per_seed"]] == [f"seed-{i}/report.html" for i in range(len(marks))]


def test_a_missing_or_unfinished_run_is_an_error(tmp_path: Path):
    from conftest import tiny

    from seedbed.grow import grow

    grow(tiny(), runs_dir=tmp_path, name="main", progress=False)
    check_grown(tmp_path, {"main": "main"})
    with pytest.raises(SeedbedError, match="run 'control' is missing"):
        check_grown(tmp_path, {"main": "main", "control": "control"})
    with sqlite3.connect(tmp_path / "main" / "run.sqlite") as db:
        db.execute("DELETE FROM checkpoints WHERE step = (SELECT MAX(step) FROM checkpoints)")
    with pytest.raises(SeedbedError, match="stopped at step"):
        check_grown(tmp_path, {"main": "main"})


def test_bad_seeds_are_one_line_and_write_nothing(tmp_path: Path):
    for args in (["--seeds", "0"], ["--seed", "-1"], ["--seeds", "2", "--seed", "-1"], ["--seeds", "-3"], ["--option", "n=2"]):
        r = cli("trial", "induction", "--scale", "tiny", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)
    assert list(tmp_path.iterdir()) == []


def assert_preregistered(folder: Path, trial_file: str) -> dict:
    """prediction.json is in the trial folder, names the trial file's hash, and was written before the main run's first event."""
    pre = json.loads((folder / "prediction.json").read_text())
    result = json.loads((folder / "trial.json").read_text())
    source = Path(__file__).parents[1] / "src" / "seedbed" / "trials" / trial_file
    assert pre["trial_file"] == trial_file and pre["trial_file_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert [{k: p[k] for k in ("id", "text", "threshold", "null") if k in p} for p in result["predictions"]] == pre["predictions"]
    assert result["prediction_written"] == pre["prediction_written"]
    assert {k: result["conditions"][k] for k in pre["conditions"]} == pre["conditions"]
    assert sorted(set(result["conditions"]) - set(pre["conditions"])) == result.get("after_main", [])  # made from grown runs
    with sqlite3.connect(folder / "main" / "run.sqlite") as db:
        first_event = db.execute("SELECT MIN(time) FROM events").fetchone()[0]
    written = datetime.fromisoformat(pre["prediction_written"]).timestamp()
    assert written < first_event and (folder / "prediction.json").stat().st_mtime < first_event
    return pre


@pytest.mark.slow
def test_induction_trial_tiny_end_to_end(tmp_path: Path):
    """`seedbed trial induction --scale tiny`, then `--seeds 2` from seed 0: the same evidence for seed 0, a summary, a listing."""
    env = {"OMP_NUM_THREADS": "1"}
    first = cli("trial", "induction", "--scale", "tiny", "--no-progress", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "verdict: did not hold" in first.stdout
    folder = tmp_path / "runs" / "induction-tiny-seed0"
    assert_preregistered(folder, "induction.py")
    result = json.loads((folder / "trial.json").read_text())
    # tiny is for the tests: too short for the circuit (seed 0: no previous-token head passes 0.4), but ablation and control hold
    assert result["verdict"] == "did not hold"
    assert {p["id"]: p["held"] for p in result["predictions"]} == {"a": False, "b": False, "c": False, "d": True, "e": True}
    assert all(p["measured"] and p["measured"] != "not measured" for p in result["predictions"])
    assert result["observer_cost"]["share"] < 0.5
    assert {f["kind"] for f in result["figures"]} == {"lines", "heatmap", "bars"}
    assert (folder / "report.html").stat().st_size > 10_000 and (folder / "report-main.png").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["control", "main"]
    assert result["runs"] == {"main": "main", "control": "control"}

    many = cli("trial", "induction", "--scale", "tiny", "--seeds", "2", "--no-progress", cwd=tmp_path, env=env)
    assert many.returncode == 0, many.stderr
    assert "in 2 processes" in many.stdout and "verdict across seeds: did not hold" in many.stdout
    top = tmp_path / "runs" / "induction-tiny-seeds0-1"
    summary = json.loads((top / "summary.json").read_text())
    again = json.loads((top / "seed-0" / "trial.json").read_text())
    assert again["evidence"] == result["evidence"] and again["verdict"] == result["verdict"]  # grown in a worker, bit for bit
    assert_preregistered(top / "seed-1", "induction.py")
    pre = json.loads((top / "prediction.json").read_text())
    assert pre["holds_on"] == 0.8 and pre["seeds"] == [0, 1] and pre["prediction_written"] < again["prediction_written"]
    assert summary["verdict"] == "did not hold" and summary["needed"] == 2
    assert [(r["seed"], r["verdict"]) for r in summary["per_seed"]] == [(0, "did not hold"), (1, "did not hold")]
    assert {p["id"]: p["held"] for p in summary["predictions"]} == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 2}
    page = (top / "report.html").read_text()
    assert 'href="seed-0/report.html"' in page and 'href="seed-1/report.html"' in page and (top / "seed-1" / "report.html").is_file()

    listing = cli("trials", "runs", cwd=tmp_path)
    assert listing.returncode == 0 and "induction" in listing.stdout and "did not hold" in listing.stdout

    (folder / "report.html").unlink()
    regen = cli("report", str(folder), cwd=tmp_path)
    assert regen.returncode == 0 and (folder / "report.html").is_file()

    # a --seeds folder's summary page, written again; a malformed or hostile summary is one line
    (top / "report.html").unlink()
    regen = cli("report", str(top), cwd=tmp_path)
    assert regen.returncode == 0, regen.stderr
    assert (top / "report.html").read_text() == page  # the same page from the same summary
    bad = dict(summary, per_seed=[{**summary["per_seed"][0], "seed": "javascript:alert(1)"}])
    (top / "summary.json").write_text(json.dumps(bad))
    regen = cli("report", str(top), cwd=tmp_path)
    assert regen.returncode == 2 and "Traceback" not in regen.stderr and len(regen.stderr.strip().splitlines()) == 1


def test_seedbed_trials_shows_the_newest_verdict_over_seeds_too(tmp_path):
    from seedbed.trials.base import last_verdicts

    runs = tmp_path / "runs"
    for folder, name, body in (
        ("induction-small-seed0", "trial.json", {"seed": 0, "finished": "2026-11-28T10:00:00+00:00"}),
        ("induction-small-seeds0-9", "summary.json", {"seeds": list(range(10)), "held_seeds": 9, "finished": "2026-11-28T11:00:00+00:00"}),
        ("induction-small-seeds0-1", "summary.json", {"seeds": [True, 1], "held_seeds": 1, "finished": "2026-11-28T12:00:00+00:00"}),
    ):
        (runs / folder).mkdir(parents=True)
        (runs / folder / name).write_text(json.dumps({"trial": "induction", "verdict": "held", "scale": "small", **body}))
    found = last_verdicts(runs)["induction"]
    assert found["seeds"] == "seeds 0–9: held on 9 of 10" and found["path"].endswith("induction-small-seeds0-9")
    listed = cli("trials", str(runs), cwd=tmp_path)
    assert listed.returncode == 0 and "seeds 0–9:" in listed.stdout and "Traceback" not in listed.stderr, listed.stdout


def test_a_worker_stopped_by_ctrl_c_starts_no_other_run(tmp_path: Path, monkeypatch):
    """Ctrl-C reaches the workers before the trial's process writes .stopping: a job already queued to a worker
    that was just interrupted must not grow (it did, once: a whole extra run after Ctrl-C)."""
    from seedbed import sweep
    from seedbed.grow import Interrupted
    from seedbed.trials import runner

    grown = []

    def fake_grow_one(trial, scale, cond, folder, name, say, progress, console):
        grown.append(name)
        if name == "first":
            raise Interrupted()

    monkeypatch.setattr(runner, "grow_one", fake_grow_one)
    monkeypatch.setattr(sweep, "_stopped", False)  # the pool's worker side lives in seedbed.sweep (one executor)
    cond = tiny().model_dump(mode="json")
    job = lambda name: (runner._grow_in_process, ("induction", {}, "tiny", cond, str(tmp_path), name, str(tmp_path)))
    with pytest.raises(Interrupted):
        sweep._in_worker(*job("first"), 1, str(tmp_path))
    sweep._in_worker(*job("second"), 1, str(tmp_path))
    assert grown == ["first"] and not (tmp_path / sweep.STOPPING).exists()
