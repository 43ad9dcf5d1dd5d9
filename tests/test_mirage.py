"""The mirage trial: its observer (greedy answers, edit distance, likelihood), its judge on hand-made evidence, and `tiny` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import cli
from test_trials import assert_preregistered
from seedbed.conditions import DigitAddition
from seedbed.soil.synthetic import DigitAdditionSoil
from seedbed.trials import Evidence, get
from seedbed.trials.mirage import AnswerWatch, Mirage, edit_distance, greedy, largest_share, rise


def _levenshtein(a: list[int], b: list[int]) -> int:
    """The textbook recursion, for checking the batched one."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def test_edit_distance_known_cases():
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [2, 3, 4, 5], [9, 9, 9, 9], [1, 2, 3, 4]])
    b = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1]])
    # equal; one substitution; a shift (one deletion + one insertion, where Hamming says 4); all wrong; reversed
    assert edit_distance(a, b).tolist() == [0, 1, 2, 4, 4]


def test_edit_distance_matches_the_textbook_recursion():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 4, (200, 6), generator=g), torch.randint(0, 4, (200, 6), generator=g)
    assert edit_distance(a, b).tolist() == [_levenshtein(x.tolist(), y.tolist()) for x, y in zip(a, b)]


class _Adder(nn.Module):
    """A hand-built "model" for 2-digit sums, answer most significant first: it reads the operands
    from the prompt and puts all its probability on the right next digit (or on `wrong` at answer digit `bad`)."""

    def __init__(self, bad: int | None = None, wrong: int = 7) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.bad, self.wrong = bad, wrong

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        logits = torch.full((B, T, 12), -20.0)
        a = tokens[:, 0] * 10 + tokens[:, 1]
        b = tokens[:, 3] * 10 + tokens[:, 4]
        digits = torch.stack([(a + b) // 100, (a + b) // 10 % 10, (a + b) % 10], dim=1)
        for t in range(5, T):  # position 5 is "=": it predicts the first answer digit
            k = t - 5
            if k < 3:
                d = torch.full_like(digits[:, k], self.wrong) if k == self.bad else digits[:, k]
                logits[torch.arange(B), t, d] = 0.0
        return logits


def test_answer_watch_scores_a_perfect_and_a_broken_adder():
    soil = DigitAdditionSoil(DigitAddition(n_digits=2), seed=0)
    watch = AnswerWatch(soil, size=64)
    perfect = watch(_Adder(), 0)
    assert perfect["watch/exact_match"] == 1.0 and perfect["watch/edit_distance"] == 0.0
    assert all(perfect[f"watch/digit{p}_accuracy"] == 1.0 for p in (0, 1, 2))
    assert perfect["watch/log_likelihood"] > -1e-6 and perfect["watch/log_likelihood_total"] > -1e-5

    broken = watch(_Adder(bad=2), 0)  # the units digit (written last) is always 7
    truth = watch.tokens[:, -1]
    sevens = float((truth == 7).float().mean())
    assert broken["watch/digit0_accuracy"] == pytest.approx(sevens)
    assert broken["watch/digit2_accuracy"] == 1.0 and broken["watch/digit1_accuracy"] == 1.0
    assert broken["watch/exact_match"] == pytest.approx(sevens)
    assert broken["watch/edit_distance"] == pytest.approx(1 - sevens)
    assert broken["watch/digit0_log_likelihood"] == pytest.approx(-20 * (1 - sevens), rel=1e-3)
    assert broken["watch/log_likelihood"] == pytest.approx(broken["watch/digit0_log_likelihood"] / 3, rel=1e-4)


def test_greedy_feeds_back_its_own_digits():
    class Counter(nn.Module):  # writes (last token + 1) mod 10
        def forward(self, tokens):
            return torch.nn.functional.one_hot((tokens % 10 + 1) % 10, 12).float()

    assert greedy(Counter(), torch.tensor([[3], [9]]), 4).tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]


def test_rise_and_largest_share():
    steps = list(range(0, 110, 10))
    jump = np.array([0, 0, 0, 0, 0, 0.1, 0.9, 1, 1, 1, 1.0])
    assert rise(steps, jump) == (50, 60)
    ramp = np.linspace(0, 1, 11)
    assert rise(steps, ramp) == (10, 90)
    assert rise(steps, 1 - ramp, up=False) == (10, 90)
    assert largest_share([0, 0.02, 0.9, 1.0]) == pytest.approx(0.88)
    assert largest_share([0, 0.33, 0.66, 1.0]) == pytest.approx(0.34)
    assert largest_share([-2.0, -1.5, -1.0, -0.5]) == pytest.approx(1 / 3, abs=1e-3)
    assert largest_share([0, 0.9, 0.0, 1.0]) == pytest.approx(1.0)  # back and forth: as abrupt as it gets
    assert largest_share([0.5, 0.5]) is None


def _evidence(**over) -> Evidence:
    """Numbers as the mirage trial measures them, for a run where everything held."""
    n = {
        "steps": 3000, "n_digits": 5, "exact_match_start": 0.0, "exact_match_end": 0.95, "exact_match_gain": 0.95,
        "exact_match_rise_from": 1500, "exact_match_rise_to": 1800, "exact_match_rise_share": 0.1,
        "log_likelihood_rise_from": 200, "log_likelihood_rise_to": 1800, "log_likelihood_span_ratio": 5.33,
        "edit_distance_rise_from": 400, "edit_distance_rise_to": 1700, "edit_distance_span_ratio": 4.33,
        "digit0_half_step": 300, "digit1_half_step": 600, "digit2_half_step": 900, "digit3_half_step": 1200,
        "digit4_half_step": 1300, "digit5_half_step": 50, "digits_passed_half": 6, "digit_half_distinct_steps": 6,
        "digit_half_spread_share": 0.4167,
        "widths": "16, 32, 48, 64, 96",
        "size_exact_match_largest_share": 0.8, "size_log_likelihood_largest_share": 0.4, "size_edit_distance_largest_share": 0.45,
    }
    n.update(over)
    return Evidence(numbers=n)


def _held(**over) -> dict[str, bool | None]:
    return {c.id: c.held for c in Mirage().judge(_evidence(**over))}


def test_mirage_is_registered_and_judges_good_evidence_held():
    assert isinstance(get("mirage"), Mirage)
    assert _held() == {"a": True, "b": True, "c": True, "d": True}


@pytest.mark.parametrize(
    "over, failed",
    [
        ({"exact_match_rise_share": 0.3}, "a"),  # a slow rise
        ({"log_likelihood_span_ratio": 1.5}, "b"),  # the likelihood rises as fast as exact match
        ({"edit_distance_span_ratio": 1.2}, "b"),
        ({"digit_half_spread_share": 0.1}, "c"),  # every digit learned within a short stretch
        ({"digit_half_distinct_steps": 2}, "c"),  # the digits learned in two groups
        ({"digits_passed_half": 1, "digit_half_distinct_steps": 1, "digit_half_spread_share": 0.0}, "c"),
        ({"size_exact_match_largest_share": 0.4}, "d"),  # exact match grows gradually with size
        ({"size_log_likelihood_largest_share": 0.7}, "d"),  # the continuous metric jumps as much
    ],
)
def test_mirage_judge_fails_the_prediction_the_evidence_breaks(over, failed):
    held = _held(**over)
    assert held[failed] is False
    assert all(v for k, v in held.items() if k != failed)


def test_no_gain_in_exact_match_fails_a_and_leaves_b_open():
    held = _held(exact_match_gain=0.1, exact_match_end=0.1)
    assert held["a"] is False and held["b"] is None


VERDICT_TINY, HELD_TINY = "did not hold", {"a": False, "b": None, "c": False, "d": False}  # tiny learns too little: observed, deterministic

@pytest.mark.slow
def test_mirage_trial_tiny_end_to_end(tmp_path: Path):
    """`seedbed trial mirage --scale tiny`: a verdict, every prediction measured, the evidence, figures and a report."""
    r = cli("trial", "mirage", "--scale", "tiny", "--no-progress", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "verdict:" in r.stdout
    folder = tmp_path / "runs" / "mirage-tiny-seed0"
    result = json.loads((folder / "trial.json").read_text())
    assert result["verdict"] == VERDICT_TINY and {p["id"]: p["held"] for p in result["predictions"]} == HELD_TINY
    assert [p["id"] for p in result["predictions"]] == ["a", "b", "c", "d"]
    assert all(p["measured"] and p["measured"] != "not measured" for p in result["predictions"])
    assert_preregistered(folder, "mirage.py")  # prediction.json, written before the main run's first event
    assert [p["threshold"] for p in result["predictions"]] == [p.threshold for p in Mirage.predictions]
    n = result["evidence"]
    for key in ("exact_match_rise_share", "log_likelihood_span_ratio", "edit_distance_span_ratio", "digit_half_spread_share",
                "size_exact_match_largest_share", "d32_exact_match", "d8_log_likelihood", "digit0_half_step"):
        assert key in n
    assert n["widths"] == "8, 16, 32" and n["n_digits"] == 3
    assert {f["id"] for f in result["figures"]} >= {"over-steps", "over-size", "digits"}
    assert result["observer_cost"]["share"] < 0.5
    assert (folder / "report.html").stat().st_size > 10_000 and (folder / "report-main.png").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["d16", "d8", "main"]
