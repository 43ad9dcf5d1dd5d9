"""The seeds trial: its judge on hand-made evidence, its options, and `tiny` end to end (runs in parallel processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

from seedbed.errors import SeedbedError
from seedbed.trials import run_trial
from seedbed.trials.base import Evidence
from seedbed.trials.seeds import Seeds


def _evidence(**over) -> Evidence:
    n = {
        "grokking_seeds": 5, "induction_seeds": 5, "grokked_seeds": 5, "induction_head_seeds": 5,
        "induction_heads": ["L1H3", "L1H0", "L1H3", "L1H2", "L1H1"], "distinct_induction_heads": 4,
        "induction_onsets": [400, 450, 525, 400, 600], "induction_onset_spread": 0.44,
        "grokking_onsets": [1800, 2100, 1650, 2400, 1900], "grokking_onset_spread": 0.39,
        "key_frequency_sets": [[4, 32, 43], [14, 35, 41, 52], [5, 18], [9, 33, 39], [6, 17, 25]], "distinct_key_sets": 5,
        "shared_key_frequencies": [],
    }
    n.update(over)
    return Evidence(numbers=n)


def _held(**over) -> dict:
    return {c.id: c.held for c in Seeds().judge(_evidence(**over))}


def test_seeds_judge_holds_on_good_evidence():
    assert _held() == dict.fromkeys("abcd", True)


@pytest.mark.parametrize(
    "over, failed",
    [
        ({"grokked_seeds": 4}, "a"),
        ({"induction_head_seeds": 3}, "a"),
        ({"distinct_induction_heads": 1, "induction_heads": ["L1H3"] * 5}, "b"),
        ({"grokking_onset_spread": 0.05}, "c"),
        ({"induction_onset_spread": 0.0}, "c"),
        ({"distinct_key_sets": 1}, "d"),
    ],
)
def test_seeds_judge_fails_the_prediction_the_evidence_breaks(over, failed):
    held = _held(**over)
    assert held[failed] is False
    assert all(v for k, v in held.items() if k != failed)


def test_too_few_onsets_is_inconclusive():
    assert _held(induction_onsets=[400], induction_onset_spread=None)["c"] is None


def test_seeds_conditions_differ_only_in_the_seed():
    runs = Seeds(n=3).conditions("small", seed=7)
    assert list(runs) == ["main", "grokking-seed8", "grokking-seed9", "induction-seed7", "induction-seed8", "induction-seed9"]
    strip = lambda c: c.model_dump(exclude={"seed"})
    assert strip(runs["main"]) == strip(runs["grokking-seed9"]) and runs["main"].seed == 7
    assert strip(runs["induction-seed7"]) == strip(runs["induction-seed9"]) and runs["induction-seed9"].seed == 9
    assert len(Seeds().conditions("small", seed=0)) == 10  # 5 seeds at small unless --option n says otherwise


def test_seeds_option_is_checked(tmp_path: Path):
    with pytest.raises(SeedbedError, match="has no option 'n'"):
        run_trial("induction", scale="tiny", options={"n": 3}, out=tmp_path / "x")
    with pytest.raises(SeedbedError, match="whole number ≥ 2"):
        run_trial("seeds", scale="tiny", options={"n": 1}, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    r = cli("trial", "grokking", "--option", "n=3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no option 'n'" in r.stderr
    assert list(tmp_path.iterdir()) == []


VERDICT_TINY, HELD_TINY = "did not hold", {"a": False, "b": False, "c": None, "d": False}  # tiny: 2 seeds, too short; observed, deterministic

@pytest.mark.slow
def test_seeds_trial_tiny_end_to_end(tmp_path: Path):
    r = cli("trial", "seeds", "--scale", "tiny", "--seed", "3", "--no-progress", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "in 2 processes" in r.stdout
    folder = tmp_path / "runs" / "seeds-tiny-seed3"
    for name in ("main", "grokking-seed4", "induction-seed3", "induction-seed4"):
        assert (folder / name / "run.sqlite").is_file()
    assert (folder / "prediction.json").stat().st_mtime < (folder / "main" / "run.sqlite").stat().st_mtime
    result = json.loads((folder / "trial.json").read_text())
    ev = result["evidence"]
    assert [r["seed"] for r in ev["runs"]] == [3, 4, 3, 4]
    assert [r["kind"] for r in ev["runs"]] == ["grokking", "grokking", "induction", "induction"]
    assert len(ev["induction_heads"]) == 2 and len(ev["key_frequency_sets"]) == 2
    assert all(p["measured"] != "not measured" for p in result["predictions"])
    assert result["verdict"] == VERDICT_TINY and {p["id"]: p["held"] for p in result["predictions"]} == HELD_TINY
    assert (folder / "report.html").stat().st_size > 10_000
