"""The seeds trial: its judge on hand-made evidence, its options, and `tiny` end to end (runs in parallel processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import cli

from seedbed.errors import SeedbedError
from seedbed.model import Transformer
from seedbed.soil import resolve
from seedbed.trials import run_trial
from seedbed.trials.base import Evidence
from seedbed.trials.seeds import Seeds


def _evidence(**over) -> Evidence:
    n = {
        "grokking_seeds": 5, "induction_seeds": 5, "grokked_seeds": 5, "induction_head_seeds": 5,
        "induction_heads": ["L1H3", "L1H0", "L1H3", "L1H2", "L1H1"], "distinct_induction_heads": 4,
        "induction_onsets": [400, 450, 525, 400, 600], "induction_onset_spread": 0.44, "induction_onset_spread_steps": 200,
        "induction_observation_interval": 25,
        "grokking_onsets": [1800, 2100, 1650, 2400, 1900], "grokking_onset_spread": 0.39, "grokking_onset_spread_steps": 750,
        "grokking_observation_interval": 25,
        "key_frequency_sets": [[4, 32, 43], [14, 35, 41, 52], [5, 18], [9, 33, 39], [6, 17, 25]], "distinct_key_sets": 5,
        "shared_key_frequencies": [],
    }
    n.update(over)
    return Evidence(numbers=n)


def _held(**over) -> dict:
    return {c.id: c.held for c in Seeds().judge(_evidence(**over))}


def test_seeds_judge_holds_on_good_evidence():
    assert _held() == dict.fromkeys("abc", True)


@pytest.mark.parametrize(
    "over, failed",
    [
        ({"grokked_seeds": 4}, "a"),
        ({"induction_head_seeds": 3}, "a"),
        # (b) the null: onsets within about one observation interval, though ≥ 10% of a small median
        ({"induction_onsets": [100, 125, 120, 110, 100], "induction_onset_spread_steps": 25, "induction_onset_spread": 0.23}, "b"),
        ({"grokking_onset_spread_steps": 74, "grokking_onset_spread": 0.2}, "b"),  # just under 3 intervals of 25
        ({"grokking_onset_spread": 0.05}, "b"),  # many intervals, but under 10% of the median
        ({"induction_onset_spread_steps": 0, "induction_onset_spread": 0.0}, "b"),
        ({"distinct_key_sets": 1}, "c"),  # the null: the split decides the frequencies
    ],
)
def test_seeds_judge_fails_the_prediction_the_evidence_breaks(over, failed):
    held = _held(**over)
    assert held[failed] is False
    assert all(v is True for k, v in held.items() if k != failed)


def test_seeds_judge_passes_at_exactly_the_thresholds():
    assert _held(grokking_onset_spread_steps=75, grokking_onset_spread=0.10)["b"] is True


def test_the_induction_head_index_is_not_judged():
    """Structural (uniform by head symmetry): the same top head on every seed fails nothing."""
    assert _held(distinct_induction_heads=1, induction_heads=["L1H3"] * 5) == dict.fromkeys("abc", True)
    assert [p.id for p in Seeds.predictions] == ["a", "b", "c"] and all(p.null for p in Seeds.predictions)


def test_too_few_onsets_or_grokked_seeds_is_inconclusive():
    assert _held(induction_onsets=[400], induction_onset_spread=None, induction_onset_spread_steps=None)["b"] is None
    held = _held(grokked_seeds=1, distinct_key_sets=1)
    assert held["c"] is None and held["a"] is False


def test_seeds_runs_share_the_data_and_differ_in_the_initial_weights():
    runs = Seeds(n=3).conditions("small", seed=7)
    assert list(runs) == ["main", "grokking-seed8", "grokking-seed9", "induction-seed7", "induction-seed8", "induction-seed9"]
    assert all(c.data_seed == 7 for c in runs.values())
    assert [c.seed for c in runs.values()] == [7, 8, 9, 7, 8, 9]
    strip = lambda c: c.model_dump(exclude={"seed"})
    assert strip(runs["main"]) == strip(runs["grokking-seed9"])
    assert strip(runs["induction-seed7"]) == strip(runs["induction-seed9"])
    assert len(Seeds().conditions("small", seed=0)) == 10  # 5 seeds at small unless --option n says otherwise
    assert Seeds(n=2).conditions("small", seed=2)["induction-seed3"].data_seed == 2  # a --seeds block's data: its first seed


def test_seeds_runs_grow_from_the_same_split_and_batches_but_different_weights():
    runs = Seeds(n=2).conditions("tiny", seed=5)
    a, soil_a = resolve(runs["main"])
    b, soil_b = resolve(runs["grokking-seed6"])
    assert torch.equal(soil_a.train, soil_b.train)  # the same training split
    assert not torch.equal(soil_a.train, resolve(Seeds(n=2).conditions("tiny", seed=6)["main"])[1].train)  # another block, another split
    (ia, si), (ib, sj) = resolve(runs["induction-seed5"]), resolve(runs["induction-seed6"])
    assert torch.equal(si.train_batch(3, 4).tokens, sj.train_batch(3, 4).tokens)  # the same batches in the same order
    for x, y in ((a, b), (ia, ib)):
        wx, wy = Transformer(x.architecture, seed=x.seed).state_dict(), Transformer(y.architecture, seed=y.seed).state_dict()
        assert wx.keys() == wy.keys() and not any(torch.equal(wx[k], wy[k]) for k in wx if wx[k].std() > 0)


def test_seeds_option_is_checked(tmp_path: Path):
    with pytest.raises(SeedbedError, match="has no option 'n'"):
        run_trial("induction", scale="tiny", options={"n": 3}, out=tmp_path / "x")
    with pytest.raises(SeedbedError, match="whole number ≥ 2"):
        run_trial("seeds", scale="tiny", options={"n": 1}, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    r = cli("trial", "grokking", "--option", "n=3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no option 'n'" in r.stderr
    assert list(tmp_path.iterdir()) == []


VERDICT_TINY, HELD_TINY = "did not hold", {"a": False, "b": None, "c": None}  # tiny: 2 seeds, too short (neither grokked); observed, deterministic

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
    assert [r["data_seed"] for r in ev["runs"]] == [3, 3, 3, 3] and ev["data_seeds"] == [3]  # one soil; four seeds of weights
    assert ev["induction_observation_interval"] == 10 and ev["grokking_observation_interval"] == 7  # observe every 10, checkpoints every 7
    assert all(p["null"] for p in result["predictions"])
    assert all(p["measured"] != "not measured" for p in result["predictions"])
    assert result["verdict"] == VERDICT_TINY and {p["id"]: p["held"] for p in result["predictions"]} == HELD_TINY
    assert (folder / "report.html").stat().st_size > 10_000
