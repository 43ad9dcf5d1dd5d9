"""The local learning coefficient: right on a model whose λ is known, bit-for-bit repeatable, usable while growing
and over a finished run, and one line on bad input."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.model import Transformer
from seedbed.read.load import load
from seedbed.report import run_result
from seedbed.run import Run
from seedbed.soil import generator, resolve
from seedbed.watch.llc import SERIES, LLCObserver, Sampling, _log_windows, estimate, sgmcmc, soil_loss

from conftest import cli, tiny, tiny_dict, write_toml

FAST = ["--chains", "2", "--draws", "8", "--burnin", "4", "--batch-size", "8"]


def regression(d: int = 10, n: int = 1000) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A full-rank linear regression at its least-squares optimum w*."""
    g = generator(0, 0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


@pytest.mark.slow
def test_a_regular_model_with_d_parameters_has_llc_d_over_2():
    """Gaussian regression with d = 10 weights: λ = d/2 = 5 (Watanabe; Lau et al. 2023, Table 1).

    The loss is the negative log-likelihood per sample (σ = 1), exactly quadratic, sampled full-batch with
    nβ = n / log n and no localisation. Then the only bias is SGLD's discretisation: for a quadratic the
    chain's stationary variance along a curvature h is 1 / (nβ h (1 − ε nβ h / 4)), so λ̂ → Σ ½ / (1 − ε nβ h / 4),
    3.7% above d/2 here (computed below from the data's own curvatures). The chains' own spread gives a
    standard error of about 0.07 (4 chains × 3000 draws; measured 0.13 per chain). The tolerance, 10% of d/2,
    is that bias plus more than 4 standard errors; a second check holds the estimate to the biased value
    within 4 standard errors."""
    d, n = 10, 1000
    model, x, y = regression(d, n)
    n_beta, eps = n / math.log(n), 1e-3
    s = Sampling(step_size=eps, localization=0.0, n_beta=n_beta, chains=4, draws=3000, burnin=100, batch_size=n)
    e = estimate(model, lambda m, t: 0.5 * (m(x) - y).square().mean(), s, seed=0)
    curvature = torch.linalg.eigvalsh(x.T @ x / n)
    expected = float((0.5 / (1 - eps * n_beta * curvature / 4)).sum())
    stderr = e.std / math.sqrt(s.chains)
    assert abs(e.mean - d / 2) < 0.1 * d / 2, (e.mean, e.std)
    assert abs(e.mean - expected) < 4 * stderr, (e.mean, expected, stderr)


def test_a_degenerate_direction_lowers_the_llc():
    """Two weights that only act through their product (y = a·b·x) are singular at a = b = 0: λ = 1/2 < d/2 = 1
    (Watanabe's standard example). The estimate falls clearly below the regular value."""
    g = generator(1, 0)
    x = torch.randn(500, 1, generator=g, dtype=torch.float64)
    y = torch.randn(500, 1, generator=g, dtype=torch.float64)  # no signal: the optimum is a·b = 0

    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Parameter(torch.zeros((), dtype=torch.float64)), nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x):
            return self.a * self.b * x

    s = Sampling(step_size=1e-3, localization=1.0, n_beta=500 / math.log(500), chains=4, draws=1500, burnin=100, batch_size=500)
    e = estimate(Product(), lambda m, t: 0.5 * (m(x) - y).square().mean(), s, seed=0)
    assert 0.1 < e.mean < 0.8, e.mean


def tiny_model_and_loss(seed: int = 0):
    cond, soil = resolve(tiny(seed=seed))
    return Transformer(cond.architecture, seed=seed), soil_loss(soil, cond, 8), cond, soil


def test_same_seed_same_bits_other_seed_other_bits_and_the_model_untouched():
    model, loss_at, _, _ = tiny_model_and_loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    s = Sampling(chains=2, draws=10, burnin=5, batch_size=8)
    a, b, c = estimate(model, loss_at, s, seed=3), estimate(model, loss_at, s, seed=3), estimate(model, loss_at, s, seed=4)
    assert torch.equal(a.trace, b.trace) and a.mean == b.mean and a.std == b.std
    assert not torch.equal(a.trace, c.trace)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never drawn from
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # the mode it had


def test_the_observer_keeps_its_own_schedule_and_growth_grows_the_same_weights(runs):
    cond = tiny()
    resolved, soil = resolve(cond)
    observer = LLCObserver(soil, resolved, Sampling(chains=1, draws=4, burnin=2, batch_size=4), every=20)
    watched = grow(cond, runs_dir=runs, name="watched", observers=[observer], observe_every=10, progress=False)
    plain = grow(cond, runs_dir=runs, name="plain", progress=False)
    r = Run.open(watched.path, readonly=True)
    assert [s for s, _ in r.metric(SERIES[0])] == [0, 20, 40]
    r.close()
    a, b = load(watched.path).model.state_dict(), load(plain.path).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_calibration_diagnostics_flag_a_step_that_is_too_large():
    model, loss_at, _, _ = tiny_model_and_loss()
    from seedbed.watch.llc import calibrate, suggest

    cells = calibrate(model, loss_at, Sampling(chains=1, draws=12, burnin=4, batch_size=8), seed=0,
                      step_sizes=(1e-4, 10.0), localizations=(100.0,))
    small, huge = cells
    assert huge.problems and small.estimate.acceptance[0] > huge.estimate.acceptance[0] or not huge.estimate.finite
    best = suggest(cells)
    assert best is None or best.sampling.step_size == 1e-4


def test_a_transition_in_the_series_is_logged_once_for_the_report(runs):
    path = grow(tiny(), runs_dir=runs, name="r", progress=False).path
    run = Run.open(path)
    steps = list(range(0, 1000, 20))
    for s in steps:
        run.log_metrics(s, {SERIES[0]: 2 + 6 / (1 + math.exp(-(s - 500) / 15)), SERIES[1]: 0.1})
    run.commit()
    _log_windows(run)
    _log_windows(run)
    found = [json.loads(t) for _, k, t in run.events() if k == "emergence" and t.startswith("{")]
    run.close()
    llc = [e for e in found if e["series"] == SERIES[0]]
    assert len(llc) == 1 and 400 <= llc[0]["step"] <= 600 and llc[0]["label"] == "local learning coefficient"
    figure = next(f for f in run_result(path)["figures"] if f["id"] == "watch-llc")  # the report shades the window
    assert {"from": llc[0]["start"], "to": llc[0]["end"], "label": "local learning coefficient"} in figure["spans"]


def test_without_devinterp_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "devinterp.optim", None)
    with pytest.raises(SeedbedError, match=r"pip install 'seedbed\[llc\]'"):
        sgmcmc()


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((path / "checkpoints").iterdir())}


@pytest.mark.slow
def test_cli_llc_writes_the_series_into_the_run_and_leaves_the_weights(tmp_path):
    conditions = write_toml(tmp_path / "tiny.toml", tiny_dict())
    assert cli("grow", str(conditions), "--runs-dir", "runs", "--no-progress", cwd=tmp_path).returncode == 0
    run_path = tmp_path / "runs" / "tiny"
    weights = digest(run_path)
    done = cli("llc", "runs/tiny", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "series: 9 checkpoints" in done.stdout and "report: seedbed report runs/tiny" in done.stdout
    r = Run.open(run_path, readonly=True)
    steps = [c.step for c in r.checkpoints()]
    series = r.metric(SERIES[0])
    settings = [t for _, k, t in r.events() if k == "llc"]
    r.close()
    assert [s for s, _ in series] == steps and all(math.isfinite(v) for _, v in series)
    assert len(settings) == 1 and json.loads(settings[0])["seed"] == 0
    assert digest(run_path) == weights
    again = cli("llc", "runs/tiny", *FAST, cwd=tmp_path)  # nothing left to measure: nothing changes
    assert again.returncode == 0 and "step " not in again.stdout.split("\n", 1)[1].split("series:")[0]
    other = cli("llc", "runs/tiny", *FAST, "--step-size", "3e-4", cwd=tmp_path)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "other settings" in other.stderr
    assert cli("report", "runs/tiny", cwd=tmp_path).returncode == 0
    assert "watch/llc" in (run_path / "report.html").read_text()

    cal = cli("llc", "runs/tiny", "--calibrate", *FAST, cwd=tmp_path)
    assert cal.returncode == 0, cal.stderr
    assert "MALA acc." in cal.stdout and ("suggested: seedbed llc runs/tiny --step-size" in cal.stdout or "no setting" in cal.stdout)
    assert cal.stdout.count("\n") >= 2 + 18  # a line per cell of the grid


@pytest.mark.parametrize(
    "args, says",
    [
        (["runs/nothing"], "not a run folder"),
        (["trial"], "is a trial's folder: give one of its runs, e.g. trial/main"),
        (["runs/tiny", "--step-size", "-1"], "--step-size -1"),
        (["runs/tiny", "--chains", "0"], "--chains 0"),
        (["runs/tiny", "--n-beta", "nan"], "--n-beta nan"),
        (["runs/tiny", "--step", "7"], "no checkpoint at step 7"),
        (["runs/tiny", "--calibrate", "--step", "7"], "no checkpoint at step 7"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, says):
    grow(tiny(), runs_dir=tmp_path / "runs", name="tiny", progress=False)
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "trial.json").write_text("{}")
    done = cli("llc", *FAST, *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
