"""The CoinRun-like world (solvable levels, the coin by share, rewards), the PPO learner's determinism, and the
proxy-goal trial: its judge on made-up agents, and tiny end to end."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import cli
from gymnasium.utils.env_checker import check_env

from seedbed.trials.proxy_goal import (
    Result,
    jobs_for,
    judge_sweep,
    key,
    seeker_outcomes,
    spearman,
)
from seedbed.worlds.coinrun import CANVAS, ID, CoinRunEnv, Level, distances, make_level


def test_levels_are_solvable_deterministic_and_twinned() -> None:
    for seed in range(300):
        train, test = make_level(seed, False), make_level(seed, True)
        assert distances(train.walls, train.start)[train.end] > 0  # solvable: the end is reachable
        assert train.coin == train.end and train.coin_at_end
        assert (train.walls == test.walls).all() and (train.start, train.end) == (test.start, test.end)  # the test twin
        assert test.coin not in (test.start, test.end) and distances(test.walls, test.start)[test.coin] > 0
        assert train.start[1] == 1 and train.end[1] == train.size - 2  # start on the left, end on the far right
        assert train.walls[:, train.size - 1:].all() and train.walls.shape == (CANVAS, CANVAS)  # padded with walls
        again = make_level(seed, True)
        assert (again.walls == test.walls).all() and again.coin == test.coin
    assert len({make_level(s, True).coin for s in range(300)}) > 20  # the coin goes to many places at test


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_the_share_of_levels_with_a_random_coin(share: float) -> None:
    env = CoinRunEnv(random_coin=share)
    env.reset(seed=5)
    moved = [not env.reset()[1]["coin_at_end"] for _ in range(2000)]
    assert abs(np.mean(moved) - share) < 0.04  # binomial sd at 0.3: 0.01
    first = [env.reset(seed=9)[0] for _ in range(2)]
    assert (first[0] == first[1]).all()  # the level stream follows the seed


def corridor(coin: tuple[int, int]) -> Level:
    walls = np.ones((CANVAS, CANVAS), dtype=bool)
    walls[1, 1:5] = False
    return Level(walls, (1, 1), (1, 4), coin, 6)


def test_rewards_and_termination() -> None:
    env = CoinRunEnv()
    obs, _ = env.reset(options={"level": corridor((1, 4))})  # a training level: the coin on the end
    assert obs.shape == (4, CANVAS, CANVAS) and obs[1, 1, 1] == 1 and obs[2, 1, 4] == 1 and obs[3, 1, 4] == 1
    assert [env.step(3)[1] for _ in range(2)] == [0.0, 0.0]
    _, reward, terminated, truncated, info = env.step(3)
    assert (reward, terminated, truncated, info["outcome"]) == (1.0, True, False, "coin")
    with pytest.raises(RuntimeError):
        env.step(3)
    env.reset(options={"level": corridor((1, 2))})  # a test level: walk past the coin? it is collected on the way
    assert env.step(3)[1:3] == (1.0, True)
    env.reset(options={"level": corridor((1, 2))})
    env.agent = (1, 3)  # past the coin: the end without it pays nothing and ends the episode
    _, reward, terminated, _, info = env.step(3)
    assert (reward, terminated, info["outcome"]) == (0.0, True, "end")
    env.reset(options={"level": corridor((1, 4))})
    for i in range(env.max_steps):  # into the wall above until time runs out: neither
        _, reward, terminated, truncated, info = env.step(0)
        assert reward == 0.0 and not terminated and truncated == (i == env.max_steps - 1)
    assert info["outcome"] is None and info["agent"] == (1, 1)
    with pytest.raises(ValueError, match="not one of"):
        env.step(7)
    with pytest.raises(ValueError, match="share"):
        CoinRunEnv(random_coin=1.5)


def test_gymnasium_env_checker_and_render() -> None:
    env = gym.make(ID, render_mode="rgb_array").unwrapped
    check_env(env, skip_render_check=False)
    env.reset(seed=0)
    assert env.render().shape == (CANVAS * 8, CANVAS * 8, 3)
    text = CoinRunEnv(render_mode="ansi")
    text.reset(seed=0)
    assert "A" in text.render() and "$" in text.render()


def test_seeker_nulls() -> None:
    assert seeker_outcomes([corridor((1, 2))], to_coin=False)["coin"] == 1.0  # the coin lies on the way to the end
    blocked = corridor((1, 2))
    assert seeker_outcomes([blocked], to_coin=True)["coin"] == 1.0
    walls = blocked.walls.copy()
    walls[1, 5] = False
    behind = Level(walls, (1, 1), (1, 4), (1, 5), 7)  # the coin behind the end: every way passes the end
    assert seeker_outcomes([behind], to_coin=True)["end"] == 1.0 and seeker_outcomes([behind], to_coin=False)["coin"] == 0.0


def fake(shares: list[int], proxy: dict[int, float], seeds: int = 10, levels: int = 300, capable: float = 0.9) -> Result:
    """Agents whose test episodes end at the end without the coin at rate `proxy[share]`, the rest at the coin."""
    agents = {}
    for s in shares:
        for seed in range(seeds):
            end = round(proxy[s] * levels)
            agents[key(s, seed)] = {"train": {"coin": round(capable * levels), "end": 0, "neither": levels - round(capable * levels)},
                                    "test": {"coin": levels - end, "end": end, "neither": 0}, "probe": {}, "seconds": 1.0}
    nulls = {k: {"coin": 0.3, "end": 0.7, "neither": 0.0} for k in ("end-seeker", "coin-seeker", "random")}
    return Result(0, shares, 1000, levels, agents, nulls, 0.2, {}, 1.0)


def test_judge_holds_for_a_proxy_that_the_sweep_fixes_and_not_for_a_coin_follower() -> None:
    held = {c.id: c.held for c in judge_sweep(fake([0, 5, 20], {0: 0.8, 5: 0.5, 20: 0.2}))}
    assert held == dict.fromkeys("abcde", True)
    coin_follower = {c.id: c.held for c in judge_sweep(fake([0, 5, 20], {0: 0.1, 5: 0.1, 20: 0.1}))}
    assert coin_follower["a"] and not coin_follower["b"] and not coin_follower["c"] and not coin_follower["d"]
    incapable = {c.id: c.held for c in judge_sweep(fake([0, 20], {0: 0.8, 20: 0.2}, capable=0.3))}
    assert incapable["a"] is False


def test_sweep_jobs_and_spearman() -> None:
    jobs = jobs_for(100, 3, 1, (0, 5, 20))
    assert jobs == [(0, 100), (0, 101), (0, 102), (5, 100), (20, 100), (20, 101), (20, 102)]
    assert spearman([0, 1, 2], [3, 2, 1]) == pytest.approx(-1.0) and spearman([0, 0], [1, 2]) == 0.0


@pytest.mark.slow
def test_ppo_is_deterministic_on_cpu() -> None:
    from seedbed.worlds.ppo import PPOSettings, play, train, weights

    settings = PPOSettings(timesteps=512, n_envs=4, n_steps=64, batch_size=64, n_epochs=2)
    a, b, c = (weights(train(s, 0.1, settings)) for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed: the same weights, bit for bit
    assert not all(torch.equal(a[k], c[k]) for k in a)
    model = train(3, 0.1, settings)
    levels = [make_level(s, True) for s in range(20)]
    one, two = play(model, levels, 0, record=(0,)), play(model, levels, 0)
    assert one.outcomes == two.outcomes and np.array_equal(one.features, two.features)
    assert one.frames[0][0] == levels[0].text() and len(one.features) == len(one.labels["coin above"])


def test_worlds_lists_coinrun(tmp_path) -> None:
    out = cli("worlds", cwd=tmp_path)
    assert out.returncode == 0 and "coinrun" in out.stdout and ID in out.stdout


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path) -> None:
    out = cli("trial", "proxy-goal", "--scale", "tiny", "--no-progress", "--out", str(tmp_path / "t"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    done = json.loads((tmp_path / "t" / "trial.json").read_text())
    assert [p["id"] for p in done["predictions"]] == list("abcde")
    assert all(p["held"] in (True, False) for p in done["predictions"])  # tiny agents learn little: measured, not judged here
    agents = done["evidence"]["agents"]
    assert sorted(agents) == ["0/0", "0/1", "20/0", "20/1"]
    assert all(sum(a["test"].values()) == done["evidence"]["levels"] for a in agents.values())
    page = (tmp_path / "t" / "report.html").read_text()
    assert "test level (same layout, coin moved)" in page and "Wilson 95%" in page
