"""Trials: the verdict logic on hand-made evidence, and the induction trial end to end at `tiny`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli
from seedbed.trials import REGISTRY, Check, Evidence, get, verdict
from seedbed.trials.induction import Induction


def test_verdict_comes_from_the_checks_alone():
    assert verdict([Check("a", "", True), Check("b", "", True)]) == "held"
    assert verdict([Check("a", "", True), Check("b", "", False)]) == "did not hold"
    assert verdict([Check("a", "", True), Check("b", "", None)]) == "inconclusive"
    assert verdict([Check("a", "", None), Check("b", "", False)]) == "did not hold"
    assert verdict([]) == "inconclusive"


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


@pytest.mark.slow
def test_induction_trial_tiny_end_to_end(tmp_path: Path):
    """`seedbed trial induction --scale tiny`, twice: same evidence bit for bit, a second folder, a report, a listing."""
    env = {"OMP_NUM_THREADS": "1"}
    first = cli("trial", "induction", "--scale", "tiny", "--no-progress", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "verdict:" in first.stdout
    folder = tmp_path / "runs" / "induction-tiny-seed0"
    result = json.loads((folder / "trial.json").read_text())
    assert result["verdict"] in ("held", "did not hold", "inconclusive")
    assert [p["id"] for p in result["predictions"]] == ["a", "b", "c", "d", "e"]
    assert all(p["measured"] and p["measured"] != "not measured" for p in result["predictions"])
    assert result["observer_cost"]["share"] < 0.5
    assert {f["kind"] for f in result["figures"]} == {"lines", "heatmap", "bars"}
    assert (folder / "report.html").stat().st_size > 10_000 and (folder / "report-main.png").is_file()
    assert (folder / "control" / "run.sqlite").is_file()

    second = cli("trial", "induction", "--scale", "tiny", "--no-progress", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads((tmp_path / "runs" / "induction-tiny-seed0-2" / "trial.json").read_text())
    assert again["evidence"] == result["evidence"] and again["verdict"] == result["verdict"]

    listing = cli("trials", "runs", cwd=tmp_path)
    assert listing.returncode == 0 and "induction" in listing.stdout and result["verdict"] in listing.stdout

    (folder / "report.html").unlink()
    regen = cli("report", str(folder), cwd=tmp_path)
    assert regen.returncode == 0 and (folder / "report.html").is_file()
