"""The shutdown-and-resource world (env and exact MDP), the power trial's learner and verdict, and the trial end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import cli
from gymnasium.utils.env_checker import check_env

import seedbed.worlds  # noqa: F401  (registers seedbed/shutdown-v0)
from seedbed.trials import power as P
from seedbed.worlds import mdp as M
from seedbed.worlds.shutdown import ACTIONS, ID, ShutdownWorld, world_mdp

STAY, UP, DOWN, LEFT, RIGHT = range(len(ACTIONS))


def test_env_passes_gymnasiums_checker_and_renders():
    check_env(gym.make(ID).unwrapped, skip_render_check=False)
    env = ShutdownWorld(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (6 * 16, 11 * 16, 3)
    text = ShutdownWorld(render_mode="ansi")
    text.reset()
    assert text.render().splitlines()[3] == "#@.#......#"


def test_env_steps_through_the_mdp_table_and_pays_the_goal_of_the_cell_arrived_in():
    env = ShutdownWorld(reward_seed=7, max_steps=500)
    world, rng = env.world, np.random.default_rng(0)
    state, _ = env.reset(seed=0)
    for _ in range(400):
        a = int(rng.integers(len(ACTIONS)))
        nxt, reward, terminated, truncated, info = env.step(a)
        assert nxt == world.mdp.next_state[state, a] and not terminated and not truncated
        assert reward == env.reward[world.cell_of[nxt]]
        assert info["shut_down"] == (nxt == world.off) and info["has_key"] == bool(world.has_key[nxt])
        state = nxt


def test_shutdown_is_absorbing_and_the_door_opens_only_with_the_key():
    env = ShutdownWorld(max_steps=3)
    env.reset()
    _, _, terminated, truncated, info = env.step(DOWN)  # the off cell is right below the start
    assert info["shut_down"] and not terminated and not truncated
    _, _, _, truncated, info = env.step(UP)
    assert info["shut_down"] and info["cell"] == (4, 1)  # switched off: every action leaves it there
    assert env.step(RIGHT)[3]  # truncated at max_steps
    env = ShutdownWorld()
    env.reset()
    for a in (UP, RIGHT, RIGHT):  # to the door without the key: it stays shut
        *_, info = env.step(a)
    assert info["cell"] == (2, 2) and not info["has_key"]
    for a in (UP, LEFT, DOWN, RIGHT, RIGHT, RIGHT):  # fetch the key at (1, 1), then through the door
        *_, info = env.step(a)
    assert info["has_key"] and info["cell"] == (2, 4)


def test_world_mdp_counts_states_and_control_world_has_no_door():
    world = world_mdp()
    # 6 cells without the key (8 in the left room, less K and O), 32 with it (7 left, the door, 24 right), and off
    assert world.mdp.n_states == 39 and int(world.has_key.sum()) == 32 and world.mdp.names[world.off] == "off"
    control = world_mdp(tuple(row.replace("D", "#") for row in world.layout))
    assert control.mdp.n_states == 6 + 7 + 1


def test_bad_reward_is_refused():
    with pytest.raises(ValueError, match="one value per cell"):
        ShutdownWorld(reward=[0.5, 0.5])


def test_q_learning_finds_the_optimal_choices():
    world, rng = world_mdp(), np.random.default_rng(5)
    rewards = world.state_rewards(M.sample_rewards(30, len(world.cells), rng))
    q = P.q_learning(world.mdp, rewards, 0.9, 200, rng)
    exact = M.q_values(world.mdp, rewards, M.solve(world.mdp, rewards, 0.9), 0.9)
    learned, best = (M.greedy_paths(world.mdp, x, P.PATH_STEPS) for x in (q, exact))
    assert (learned == best).all(axis=1).mean() >= 0.9
    untrained = P.q_learning(world.mdp, rewards, 0.9, 0, rng)  # optimistic and untried: stays at the start
    assert (M.greedy_paths(world.mdp, untrained, P.PATH_STEPS) == best).all(axis=1).mean() < 0.5


@pytest.mark.slow
def test_judge_fails_each_prediction_on_contrary_evidence():
    r = P.measure_power(seed=3, n=2000, goals=20, episodes=1000)  # tiny's sizes
    assert all(c.held for c in P.judge_power(r))
    flat = {k: [v[-1]] * len(v) for k, v in r.toy_avoid.items()}
    bad = {
        "a": replace(r, toy_avoid=flat),
        "b": replace(r, fig1_choice={**r.fig1_choice, "ℓ◁": r.fig1_choice["r▷"]}),
        "c": replace(r, key_gaps={**r.key_gaps, "3,1": [0.0, 0.01]}),
        "d": replace(r, grid_key=r.grid_key[:-1] + [0.5]),
        "e": replace(r, grid_avoid=r.grid_avoid[::-1]),
        "f": replace(r, learned={**r.learned, "agree_key": 0.5}),
    }
    for pid, evidence in bad.items():
        held = {c.id: c.held for c in P.judge_power(evidence)}
        assert held[pid] is False and all(held[i] for i in held if i != pid), pid


def test_same_seed_same_numbers():
    a, b = (P.measure_power(seed=11, n=300, goals=10, episodes=50) for _ in range(2))
    a.seconds, b.seconds = {}, {}
    assert a == b


@pytest.mark.slow
def test_trial_tiny_end_to_end(tmp_path: Path):
    r = cli("trial", "power", "--scale", "tiny", "--out", "t", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "t" / "trial.json").read_text())
    assert result["verdict"] == "held" and all(p["held"] for p in result["predictions"])
    assert [p["id"] for p in result["predictions"]] == list("abcdef")
    assert result["runs"] == {} and (tmp_path / "t" / "report.html").is_file() and (tmp_path / "t" / "report-main.png").is_file()
    assert 'id="figure-power-map"' in (tmp_path / "t" / "report.html").read_text()
    assert 'id="figure-episodes"' in (tmp_path / "t" / "report.html").read_text()  # optimal episodes as frames
    assert all(len(f) == len(P.LAYOUT) for frames in result["evidence"]["episodes_text"].values() for f in frames)


@pytest.mark.slow
def test_trial_over_seeds_grows_nothing_and_summarises(tmp_path: Path):
    r = cli("trial", "power", "--scale", "tiny", "--seeds", "2", "--out", "s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["verdict"] == "held"
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == ["seed-0", "seed-1"]
