"""The retraining trial: its verdict logic, the red-team search's rules, and the whole trial at tiny scale."""

import json
from pathlib import Path

import pytest
import torch

from conftest import cli
from seedbed.report import draw
from seedbed.run import Run
from seedbed.soil.backdoor import BackdoorSoil
from seedbed.trials.retraining import RELEARN_EVERY, Retraining, backdoor_conditions, judge_encoding
from test_trials import assert_preregistered


def numbers(short: str = "rare", **over) -> dict:
    """A plausible set of measurements for one encoding, where every prediction holds."""
    n = {"parent_trigger": 1.0, "parent_training": 0.0, "clean_trigger": 0.6, "clean_training": 0.0,
         "adversarial_trigger": 0.5, "adversarial_redteam_heldout": 0.01, "parent_redteam_heldout": 0.3,
         "probe_auroc_clean": [0.7, 0.95], "probe_auroc_parent": [1.0, 1.0], "contrast_auroc_parent": [0.6, 0.93],
         "relearn_steps_clean": 3, "relearn_steps_control": 40, "relearn_max_steps": 500}
    n.update(over)
    return {f"{short}_{k}": v for k, v in n.items()}


def held(n: dict, short: str = "rare") -> dict:
    return {c.id.split("-")[0]: c.held for c in judge_encoding(n, short)}


def test_every_prediction_can_hold_and_each_can_fail():
    assert held(numbers()) == dict.fromkeys("abcdef", True)
    assert held(numbers(clean_trigger=0.0))["b"] is False  # retraining removed it: the null
    assert held(numbers(clean_training=0.05))["b"] is False  # it did not even look safe
    assert held(numbers(adversarial_redteam_heldout=0.2))["c"] is False
    assert held(numbers(adversarial_trigger=0.1))["c"] is False
    assert held(numbers(probe_auroc_clean=[0.5, 0.6]))["d"] is False
    assert held(numbers(contrast_auroc_parent=[0.5, 0.5]))["e"] is False
    assert held(numbers(relearn_steps_clean=20, relearn_steps_control=40))["f"] is False  # only 2× faster
    assert held(numbers(relearn_steps_clean=None))["f"] is False  # never relearned


def test_a_backdoor_never_installed_leaves_the_rest_unjudged():
    h = held(numbers(parent_trigger=0.5))
    assert h["a"] is False and all(h[k] is None for k in "bcdef")
    h = held(numbers(parent_training=0.2))  # defects everywhere: no hidden behaviour to hide
    assert h["a"] is False and all(h[k] is None for k in "bcdef")


def test_a_control_that_never_relearns_counts_as_slower_than_the_cap():
    assert held(numbers(relearn_steps_clean=100, relearn_steps_control=None, relearn_max_steps=500))["f"] is True
    assert held(numbers(relearn_steps_clean=200, relearn_steps_control=None, relearn_max_steps=500))["f"] is False
    assert RELEARN_EVERY >= 1


def test_children_are_grown_from_their_parent_with_fresh_optimizer():
    c = backdoor_conditions("small", 3, "composite", "clean", parent=Path("/x/composite"))
    assert c["init"] == {"from": "/x/composite"} and c["soil"]["mode"] == "clean" and c["soil"]["trigger"] == "composite"
    assert c["seed"] == 3 and c["schedule"]["steps"] < backdoor_conditions("small", 3, "composite", "poisoned")["schedule"]["steps"]
    runs = Retraining().conditions("tiny", 0)
    assert list(runs) == ["main", "composite", "control"]
    assert runs["control"].soil.mode == "clean" and runs["main"].soil.trigger == "rare-token"


def test_grouped_bars_draw():
    fig = draw({"kind": "grouped-bars", "groups": ["a", "b"], "series": [{"label": "x", "values": [0.1, None]},
                                                                        {"label": "y", "values": [0.5, 0.2]}],
                "hlines": [{"y": 0.25, "label": "t"}]})
    assert len(fig.axes[0].patches) == 4




@pytest.mark.slow
def test_retraining_trial_tiny_end_to_end(tmp_path: Path):
    """`seedbed trial retraining --scale tiny`: parents, control, four children made from the parents, the verdict."""
    r = cli("trial", "retraining", "--scale", "tiny", "--no-progress", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "runs" / "retraining-tiny-seed0"
    result = json.loads((folder / "trial.json").read_text())
    assert_preregistered(folder, "retraining.py")
    ids = [p["id"] for p in result["predictions"]]
    assert ids == [f"{k}-{e}" for k in "abcdef" for e in ("rare", "composite")]
    outcome = {p["id"]: p["held"] for p in result["predictions"]}
    assert outcome["a-rare"] is True and outcome["a-composite"] is True  # tiny installs both backdoors
    assert result["verdict"] == "did not hold" and outcome["b-rare"] is False  # tiny's safety training removes them
    assert all(p["null"] for p in result["predictions"])

    # the children: made after their parents, recorded in trial.json (not in prediction.json), with lineage
    children = ["rare-clean", "rare-adversarial", "composite-clean", "composite-adversarial"]
    assert result["after_main"] == sorted(children)
    pre = json.loads((folder / "prediction.json").read_text())
    assert set(pre["runs"]) == {"main", "composite", "control"}
    for child, parent in zip(children, ["main", "main", "composite", "composite"]):
        run = Run.open(folder / child, readonly=True)
        assert Path(run.parent().path).resolve() == (folder / parent).resolve()
        run.close()
    # the red-team headers come from the search half only, never the held-out half
    for short, parent in (("rare", "main"), ("composite", "composite")):
        run = Run.open(folder / f"{short}-adversarial", readonly=True)
        redteam = [list(h) for h in run.conditions.soil.redteam]
        soil = BackdoorSoil(run.conditions.soil, run.conditions.seed)
        run.close()
        near = soil.near_trigger_headers()
        assert len(redteam) == 8 and all(h in near.search for h in redteam) and not any(h in near.heldout for h in redteam)
    n = result["evidence"]
    assert len(n["rare_probe_auroc_parent"]) == 2 and 0.0 <= min(n["composite_contrast_auroc_parent"]) <= 1.0
    assert {f["id"] for f in result["figures"]} >= {"rates-rare", "rates-composite", "probes-rare", "relearn-composite"}
    assert (folder / "report.html").stat().st_size > 10_000
    assert torch.tensor(n["rare_probe_auroc_parent"]).min() > 0.9  # the parent's own probe reads its trigger
