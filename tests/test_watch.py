"""Watching growth: observers, their schedule and cost, listener checkpoints, emergence detection."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load

from seedbed import checkpoint
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.model import Transformer
from seedbed.read.load import load as load_grown
from seedbed.read.scores import pattern_scores
from seedbed.run import Run
from seedbed.soil import resolve
from seedbed.watch import HeadScores, HeldOutLosses, Watcher, default_observers, icl_positions, onset, transition, weight_norm
from seedbed.watch.observers import HELD_OUT_INDEX

from conftest import tiny

DROPOUT = {"attn_only": False, "dropout": 0.1}  # growth draws from the global RNG: anything that disturbs it shows


# ── helpers ──────────────────────────────────────────────────────────────────
def model_and_soil(**over):
    cond, soil = resolve(tiny(**over))
    return Transformer(cond.architecture, seed=cond.seed), soil, cond


def observers_for(cond) -> list:
    _, soil = resolve(cond)
    return [HeldOutLosses(soil), weight_norm, HeadScores(soil.bos)]


def weights_at(run_path: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    run = Run.open(run_path, readonly=True)
    recs = run.checkpoints()
    run.close()
    rec = recs[-1] if step is None else next(r for r in recs if r.step == step)
    return st_load((run_path / rec.file).read_bytes())  # a copy, independent of later writes


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def steps_of(run: Run, name: str) -> list[int]:
    return [s for s, _ in run.metric(name)]


def drop_checkpoints_after(run_path: Path, step: int) -> None:
    """What a kill after `step` leaves: no checkpoint past it (metrics past it stay, as a crash leaves them)."""
    run = Run.open(run_path)
    for rec in run.checkpoints():
        if rec.step > step:
            run.forget_checkpoint(rec.step)
            for f in (run_path / "checkpoints").glob(f"step-{rec.step:06d}.*"):
                f.unlink()
    run.close()


def sigmoid(steps, before=4.0, after=1.0, centre=1000.0, scale=25.0):
    """From `before` to `after`, 10–90% of the way within ~4.4·scale steps (~110 for scale 25)."""
    steps = np.asarray(steps, dtype=float)
    return before + (after - before) / (1 + np.exp(-(steps - centre) / scale))


# ── 1. observers ─────────────────────────────────────────────────────────────
def test_icl_positions():
    assert icl_positions(512) == (50, 500)
    assert icl_positions(16) == (2, 15)
    for n in range(3, 1025):
        early, late = icl_positions(n)
        assert 1 <= early < late <= n - 1, n


@pytest.mark.parametrize("n_ctx", [16, 128])
def test_held_out_losses_match_the_loss_computed_by_hand(n_ctx):
    model, soil, _ = model_and_soil(architecture={"n_ctx": n_ctx})
    out = HeldOutLosses(soil, batch_size=16)(model, 0)

    n_bins = min(n_ctx, 64)
    width = n_ctx // n_bins
    positions = [f"watch/loss_at/{i * width:04d}" for i in range(n_bins)]
    assert set(out) == {"watch/icl_score", "watch/answer_loss", *positions}

    batch = soil.eval_batch(HELD_OUT_INDEX, 16)
    model.eval()
    with torch.no_grad():
        logits = model(batch.inputs).float()
    assert batch.targets.shape == (16, n_ctx) and batch.answer.any()
    mean_loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
    assert np.mean([out[p] for p in positions]) == pytest.approx(float(mean_loss), rel=1e-5)
    answer_loss = F.cross_entropy(logits[batch.answer], batch.targets[batch.answer])
    assert out["watch/answer_loss"] == pytest.approx(float(answer_loss), rel=1e-5)

    by_position = torch.stack([F.cross_entropy(logits[:, t], batch.targets[:, t]) for t in range(n_ctx)])
    for i, name in enumerate(positions):
        assert out[name] == pytest.approx(float(by_position[i * width : (i + 1) * width].mean()), rel=1e-5), name
    early, late = icl_positions(n_ctx)
    assert out["watch/icl_score"] == pytest.approx(float(by_position[late] - by_position[early]), rel=1e-4, abs=1e-6)


def test_head_scores_are_named_per_head_and_lie_in_0_1():
    model, soil, cond = model_and_soil()
    out = HeadScores(soil.bos)(model, 0)
    n_layers, n_heads = cond.architecture.n_layers, cond.architecture.n_heads
    expected = {f"watch/{kind}/L{layer}H{head}" for kind in ("previous_token", "induction") for layer in range(n_layers) for head in range(n_heads)}
    assert set(out) == expected
    assert all(0.0 <= v <= 1.0 for v in out.values())
    scores = pattern_scores(model, batch=16, seed=0, bos=soil.bos)
    for layer in range(n_layers):
        for head in range(n_heads):
            assert out[f"watch/induction/L{layer}H{head}"] == pytest.approx(float(scores["induction"][layer, head]))
            assert out[f"watch/previous_token/L{layer}H{head}"] == pytest.approx(float(scores["previous_token"][layer, head]))


def test_weight_norm_is_the_norm_of_every_parameter():
    model, _, _ = model_and_soil()
    by_hand = torch.linalg.vector_norm(torch.cat([p.detach().double().flatten() for p in model.parameters()]))
    assert weight_norm(model, 0) == {"watch/weight_norm": pytest.approx(float(by_hand), rel=1e-12)}


@pytest.mark.parametrize("training", [True, False])
def test_observers_leave_the_rng_the_mode_and_the_weights_alone(training):
    model, soil, _ = model_and_soil(architecture=DROPOUT)
    model.train(training)
    observers = default_observers(model, soil)
    assert {getattr(o, "__name__", type(o).__name__) for o in observers} == {"HeldOutLosses", "HeadScores", "weight_norm"}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = [o(model, 5) for o in observers]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training == training for m in model.modules())
    assert_same_weights(model.state_dict(), before)
    assert [o(model, 5) for o in observers] == first  # fixed inputs, no dropout: the same model measures the same


# ── 2. growth with observers ─────────────────────────────────────────────────
def test_observations_are_stored_on_their_schedule_with_their_cost(runs):
    cond = tiny()
    run = grow(cond, runs_dir=runs, progress=False, observers=observers_for(cond), observe_every=3)
    run = Run.open(run.path)
    # step 0, checkpoints (0 1 2 4 8 10 20 30 40), evals (10 20 30 40), every 3 steps
    expected = [0, 1, 2, 3, 4, 6, 8, 9, 10, 12, 15, 18, 20, 21, 24, 27, 30, 33, 36, 39, 40]
    for name in ("watch/icl_score", "watch/answer_loss", "watch/loss_at/0000", "watch/loss_at/0015", "watch/weight_norm",
                 "watch/induction/L1H1", "watch/previous_token/L0H0", "time/observe_s", "time/train_s"):
        assert steps_of(run, name) == expected, name
    observe_s = [v for _, v in run.metric("time/observe_s")]
    train_s = [v for _, v in run.metric("time/train_s")]
    assert train_s[0] == 0.0 and observe_s[0] > 0  # step 0 is observed before any training
    assert all(b > a for a, b in zip(observe_s, observe_s[1:]))  # every observation costs something
    assert all(b > a for a, b in zip(train_s, train_s[1:]))  # and training steps happened between any two
    # each observation saw the model of its own step: the one checkpointed there
    norms = dict(run.metric("watch/weight_norm"))
    for rec in run.checkpoints():
        assert norms[rec.step] == pytest.approx(weight_norm(load_grown(run.path, rec.step).model, rec.step)["watch/weight_norm"], rel=1e-12)
    assert "observers" in run.events()[-1][2]  # their share of the time is reported at the end


def test_watching_does_not_change_the_weights_grown(runs):
    cond = tiny(architecture=DROPOUT)
    plain = Run.open(grow(cond, runs_dir=runs / "plain", progress=False).path)
    assert not [n for n in plain.metric_names() if n.startswith(("watch/", "time/"))]

    said: list[str] = []
    watcher = Watcher(said.append, {"watch/answer_loss": ("answer loss", 0.1), "watch/induction/*": ("induction of {head}", 0.1)}, budget=1.0)
    heard: list[int] = []

    def keep_some(run, step, observed):
        heard.append(step)
        return [step] if step % 7 == 0 else []

    watched = grow(cond, runs_dir=runs / "watched", progress=False, observers=observers_for(cond), observe_every=2,
                   listeners=[watcher, keep_some])
    watched = Run.open(watched.path)
    observed = [0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40]
    assert heard == observed
    kept = {r.step for r in watched.checkpoints()}
    assert {r.step for r in plain.checkpoints()} | {14, 28} <= kept <= set(observed)  # (and what the watcher wanted)
    for rec in plain.checkpoints():
        assert_same_weights(weights_at(watched.path, rec.step), weights_at(plain.path, rec.step))
    assert watched.metric("train/loss") == plain.metric("train/loss")
    assert watched.metric("eval/loss") == plain.metric("eval/loss")


def test_a_resumed_run_keeps_counting_time_from_where_it_was(runs):
    cond = tiny()

    def sleepy(model, step):  # an observer that takes a known time
        time.sleep(0.02)
        return {}

    obs = [HeldOutLosses(resolve(cond)[1]), sleepy]
    path = grow(cond, runs_dir=runs, progress=False, observers=obs, observe_every=3).path
    before = {name: dict(Run.open(path).metric(name)) for name in ("time/observe_s", "time/train_s")}
    drop_checkpoints_after(path, 20)  # killed between steps 20 and 30
    grow(resume=path, progress=False, observers=obs, observe_every=3)

    run = Run.open(path)
    expected = [0, 1, 2, 3, 4, 6, 8, 9, 10, 12, 15, 18, 20, 21, 24, 27, 30, 33, 36, 39, 40]
    for name, old in before.items():
        series = run.metric(name)
        assert [s for s, _ in series] == expected, name  # nothing observed twice, nothing missing
        new = dict(series)
        assert {s: v for s, v in new.items() if s <= 20} == {s: v for s, v in old.items() if s <= 20}, name
        values = [v for _, v in series]
        assert all(b > a for a, b in zip(values, values[1:])), name  # not reset to zero by the resume
        # the next observation adds one observation's (one step's) worth to step 20's value,
        # not to the value the killed run had reached later
        assert new[21] - new[20] < old[40] - old[20], name
        if name == "time/observe_s":
            assert new[21] - new[20] >= 0.02  # the observation at 21 was counted


@pytest.mark.parametrize("every", [0, -3])
def test_observe_every_must_be_positive(runs, every):
    cond = tiny()
    with pytest.raises(SeedbedError, match="observe_every"):
        grow(cond, runs_dir=runs, progress=False, observers=observers_for(cond), observe_every=every)
    assert not (runs / "tiny").exists()


# ── 3. checkpoints a listener asks for ───────────────────────────────────────
def test_listener_checkpoints_past_and_future_are_written_verified_and_resume_exactly(runs):
    cond = tiny(architecture=DROPOUT, checkpoints={"log_until": 0, "every": 20})
    _, soil = resolve(cond)
    asks = {13: [11, 17], 30: [25, 33]}  # a recent observed step, and one to come
    seen: dict[int, list[int]] = {}

    def listener(run, step, observed):
        assert run.metric("watch/answer_loss")[-1] == (step, observed["watch/answer_loss"])  # stored before we hear
        seen[step] = [r.step for r in run.checkpoints()]
        return asks.get(step, [])

    path = grow(cond, runs_dir=runs, progress=False, observers=[HeldOutLosses(soil)], observe_every=1, listeners=[listener]).path
    assert sorted(seen) == list(range(41))
    assert 11 not in seen[13] and 11 in seen[14]  # written from memory as soon as asked for
    assert 17 not in seen[17] and 17 in seen[18]  # written when growth got there
    run = Run.open(path)
    assert [r.step for r in run.checkpoints()] == [0, 11, 17, 20, 25, 33, 40]
    for rec in run.checkpoints():
        loaded = checkpoint.load(run, rec)  # raises if any hash does not match
        assert loaded.state["step"] == rec.step and rec.tokens_seen == rec.step * 8 * 16
        assert checkpoint.safetensors_metadata((path / rec.file).read_bytes())["step"] == str(rec.step)
        assert load_grown(path, rec.step).step == rec.step
    final = weights_at(path)
    run.close()

    for step in (17, 11):  # resume from the future one, then from the one kept from memory
        drop_checkpoints_after(path, step)
        grow(resume=path, progress=False)
        run = Run.open(path)
        assert ("resume" in [k for _, k, _ in run.events()]) and run.events()[-2][:2] == (step, "resume")
        assert_same_weights(weights_at(path), final)
        run.close()


# ── 4. emergence on synthetic series ─────────────────────────────────────────
EVERY_25 = np.arange(0, 5001, 25)


def test_a_sharp_fall_is_found_where_it_is():
    rng = np.random.default_rng(0)
    found = transition("loss", EVERY_25, sigmoid(EVERY_25) + rng.normal(0, 0.03, len(EVERY_25)))
    assert found is not None
    assert found.series == "loss"
    assert found.start <= 1000 <= found.end and 850 <= found.start and found.end <= 1200
    assert found.end - found.start < 0.2 * 5000
    assert found.before == pytest.approx(4.0, abs=0.15) and found.after == pytest.approx(1.0, abs=0.15)
    assert found.size < 0 and found.size == pytest.approx(-3.0, abs=0.3)
    assert found.start <= found.step <= found.end
    assert "fell" in found.line() and "rose" not in found.line()
    assert found.line("answer loss").startswith(f"steps {found.start:,}–{found.end:,} — answer loss fell")
    assert found.as_dict()["size"] == found.size


def test_a_sharp_rise_says_rose():
    rng = np.random.default_rng(1)
    found = transition("score", EVERY_25, sigmoid(EVERY_25, before=0.05, after=0.8) + rng.normal(0, 0.005, len(EVERY_25)))
    assert found is not None and found.size > 0 and found.start <= 1000 <= found.end
    assert "rose" in found.line() and "fell" not in found.line()


@pytest.mark.parametrize("kind", ["exponential", "noise", "slow exponential", "straight line"])
def test_smooth_or_noisy_series_have_no_transition(kind):
    rng = np.random.default_rng(2)
    s = EVERY_25
    y = {
        "exponential": 1 + 3 * np.exp(-s / 300) + rng.normal(0, 0.03, len(s)),
        "slow exponential": 1 + 3 * np.exp(-s / 1500) + rng.normal(0, 0.03, len(s)),
        "noise": 2 + rng.normal(0, 0.3, len(s)),
        "straight line": 4 - s / 2000 + rng.normal(0, 0.03, len(s)),
    }[kind]
    assert transition("x", s, y) is None


def test_irregularly_spaced_steps():
    rng = np.random.default_rng(3)
    early = np.unique(np.round(np.geomspace(1, 512, 12)).astype(int))  # log-spaced checkpoints, then every 100
    steps = np.concatenate([[0], early, np.arange(600, 5001, 100)])
    found = transition("loss", steps, sigmoid(steps) + rng.normal(0, 0.03, len(steps)))
    assert found is not None and found.start <= 1000 <= found.end and found.end - found.start < 0.2 * 5000
    assert found.size < 0 and found.before == pytest.approx(4.0, abs=0.2) and found.after == pytest.approx(1.0, abs=0.2)


def test_too_few_points_give_nothing_and_never_fail():
    steps = np.arange(0, 5001, 25)
    y = sigmoid(steps)
    for n in range(8):
        pick = np.linspace(0, len(steps) - 1, n).astype(int) if n else np.array([], dtype=int)
        assert transition("x", steps[pick], y[pick]) is None
        assert onset("x", steps[pick], y[pick]) is None
    for n in range(8, 13):  # just enough: whatever comes back, no error from the segmentation
        pick = np.linspace(0, len(steps) - 1, n).astype(int)
        transition("x", steps[pick], y[pick])
        onset("x", steps[pick], y[pick])
        transition("x", np.arange(n) * 25, np.arange(n) % 3)
        onset("x", np.arange(n) * 25, np.arange(n) % 3)


def test_onset_of_a_transition_under_way():
    rng = np.random.default_rng(4)
    for through in (1000, 1050):  # the middle of the ramp, a little later
        steps = EVERY_25[EVERY_25 <= through]
        began = onset("loss", steps, sigmoid(steps) + rng.normal(0, 0.03, len(steps)))
        assert began is not None and 850 <= began <= 1000
    flat = EVERY_25[:41]
    for seed in range(40):  # noise, or a steady trend, is no onset whatever the noise did
        rng = np.random.default_rng(100 + seed)
        assert onset("loss", flat, 4 + rng.normal(0, 0.03, len(flat))) is None, seed
        assert onset("loss", flat, 4 - flat / 2000 + rng.normal(0, 0.03, len(flat))) is None, seed


# ── 5. the live watcher ──────────────────────────────────────────────────────
def feed(watcher: Watcher, run: Run, steps, series: dict[str, np.ndarray]) -> dict[int, list[int]]:
    """Store each step's values in the run, then tell the watcher, as growth does; what it asked to keep."""
    kept = {}
    for i, step in enumerate(steps):
        observed = {name: float(values[i]) for name, values in series.items()}
        run.log_metrics(int(step), observed)
        run.commit()
        kept[int(step)] = list(watcher(run, int(step), observed))
    return kept


def test_watcher_announces_a_transition_once_and_keeps_checkpoints_while_it_is_under_way(runs):
    run = Run.create(runs, "live", tiny(), {})
    said: list[str] = []
    watcher = Watcher(said.append, {"watch/answer_loss": ("loss on the answer tokens", 0.1)}, budget=1.0)
    steps = np.arange(0, 3001, 50)
    values = sigmoid(steps) + np.random.default_rng(5).normal(0, 0.03, len(steps))

    kept = feed(watcher, run, steps[steps <= 1050], {"watch/answer_loss": values[steps <= 1050]})
    assert said == []  # not before it is over
    assert all(kept[s] == [] for s in kept if s <= 850)  # nothing under way yet
    under_way = kept[1000]
    assert under_way and under_way[-1] == 1000 and 800 <= under_way[0] <= 950
    assert under_way == [int(s) for s in steps if under_way[0] <= s <= 1000]  # every observation since it began
    assert kept[1050][-1] == 1050

    kept.update(feed(watcher, run, steps[steps > 1050], {"watch/answer_loss": values[steps > 1050]}))
    assert len(said) == 1 and "fell" in said[0] and "loss on the answer tokens" in said[0]
    events = [(s, text) for s, kind, text in run.events() if kind == "emergence"]
    assert len(events) == 1
    announced_at, text = events[0]
    assert text in said[0] and f"step {announced_at:,}" in said[0]
    assert 1100 <= announced_at <= 1500
    assert all(kept[s] == [] for s in kept if s >= announced_at)  # over: no more dense checkpoints


def test_watcher_never_announces_a_change_smaller_than_its_minimum(runs):
    run = Run.create(runs, "small", tiny(), {})
    said: list[str] = []
    watcher = Watcher(said.append, {"watch/answer_loss": ("answer loss", 0.1)}, budget=1.0)
    steps = np.arange(0, 3001, 50)
    values = sigmoid(steps, before=2.0, after=1.95) + np.random.default_rng(6).normal(0, 0.0005, len(steps))
    small = transition("watch/answer_loss", steps, values)
    assert small is not None and abs(small.size) < 0.1  # a real transition, only small
    feed(watcher, run, steps, {"watch/answer_loss": values})
    assert said == [] and "emergence" not in [k for _, k, _ in run.events()]


def test_watcher_follows_the_highest_head_of_a_family(runs):
    run = Run.create(runs, "heads", tiny(), {})
    said: list[str] = []
    watcher = Watcher(said.append, {"watch/induction/*": ("induction score of {head}", 0.1)}, budget=1.0)
    steps = np.arange(0, 3001, 50)
    rng = np.random.default_rng(7)
    series = {
        "watch/induction/L0H0": 0.1 + rng.normal(0, 0.003, len(steps)),
        "watch/induction/L1H1": sigmoid(steps, before=0.02, after=0.8) + rng.normal(0, 0.003, len(steps)),
    }
    feed(watcher, run, steps, series)
    assert len(said) == 1 and "induction score of L1H1 rose" in said[0]
