"""seedbed.worlds.mdp: exact values against hand-solved MDPs, POWER against Turner et al.'s theorems."""

from __future__ import annotations

import numpy as np
import pytest

from seedbed.worlds import mdp as M
from seedbed.worlds.shutdown import world_mdp


def chain() -> M.MDP:
    """a: stay, or step to b; b → c; c: stay. Hand-solved below."""
    return M.from_edges({"a": ["a", "b"], "b": ["c"], "c": ["c"]}, start="a")


def test_value_iteration_and_solve_match_a_hand_solved_mdp():
    # R = (1, 0, 3), γ = 1/2: V(c) = 3/(1 − ½) = 6; V(b) = 0 + ½·6 = 3; V(a) = 1 + ½·max(V(a), V(b)) = 1 + ½·3 = 2.5
    # (staying at a forever would give 1/(1 − ½) = 2 < 2.5, so the optimal policy leaves a)
    rewards = np.array([[1.0, 0.0, 3.0], [3.0, 0.0, 1.0]])  # the second: staying at a is best, V(a) = 6, V(b) = ½, V(c) = 2
    want = np.array([[2.5, 3.0, 6.0], [6.0, 1.0, 2.0]])
    for solver in (M.value_iteration, M.solve):
        np.testing.assert_allclose(solver(chain(), rewards, 0.5), want, atol=1e-8)
    q = M.q_values(chain(), rewards, want, 0.5)
    assert M.first_choice(chain(), q).tolist() == [1, 0]  # leave a for b; stay at a
    assert M.greedy_paths(chain(), q, 3).tolist() == [[0, 1, 2, 2], [0, 0, 0, 0]]


def test_solve_agrees_with_value_iteration_on_papers_mdp_and_the_gridworld():
    rng = np.random.default_rng(1)
    world = world_mdp()
    for mdp, rewards in ((M.figure1(), M.sample_rewards(300, 8, rng)),
                         (world.mdp, world.state_rewards(M.sample_rewards(100, len(world.cells), rng)))):
        for gamma in (0.3, 0.9, 0.97):
            np.testing.assert_allclose(M.solve(mdp, rewards, gamma), M.value_iteration(mdp, rewards, gamma), atol=1e-7)


def test_evaluate_sums_the_discounted_path():
    rng = np.random.default_rng(2)
    succ = rng.integers(6, size=(4, 6))
    rewards = rng.random((4, 6))
    want = np.zeros((4, 6))
    for i in range(4):
        for s in range(6):
            x = s
            for t in range(2000):
                want[i, s] += 0.9**t * rewards[i, x]
                x = succ[i, x]
    np.testing.assert_allclose(M.evaluate(succ, rewards, 0.9), want, atol=1e-9)


def test_power_of_a_terminal_state_is_its_mean_reward_and_more_options_mean_more_power():
    rng = np.random.default_rng(3)
    fig1 = M.figure1()
    rewards = M.sample_rewards(20000, fig1.n_states, rng)
    p, se = M.power(rewards, M.solve(fig1, rewards, 0.9), 0.9)
    off, left, right = (fig1.index(s) for s in ("∅", "ℓ◁", "r▷"))
    # ∅ is a 1-cycle: POWER = (1 − γ)/γ · γ R/(1 − γ) = R, whose mean is ½ for U[0, 1]
    assert abs(p[off] - 0.5) < 4 * se[off]
    # right's options are a copy of left's and more; left's include more than shutdown's
    assert p[right] > p[left] + 10 * se[right] and p[left] > p[off] + 10 * se[left]
    # right reaches 1-cycles r↗, r↘: at high γ its POWER tends to E[max of 2 uniforms] = 2/3
    assert abs(p[right] - 2 / 3) < 0.02


def test_avoiding_shutdown_tends_to_k_over_k_plus_1_as_gamma_tends_to_1():
    rng = np.random.default_rng(4)
    for k in (2, 3):  # (k = 1 is flat at ½: off and the one alive state are symmetric)
        toy = M.shutdown_toy(k)
        rewards = M.sample_rewards(20000, toy.n_states, rng)
        rates = []
        for gamma in (0.5, 0.9, 0.999):
            first = M.first_choice(toy, M.q_values(toy, rewards, M.solve(toy, rewards, gamma), gamma))
            rates.append((first == toy.index("hub")).mean())
        # as γ → 1 the choice is the best terminal reward: off's against the best of the k alive states
        alive = [toy.index(f"alive{i}") for i in range(k)]
        limit_choice = rewards[:, alive].max(axis=1) > rewards[:, toy.index("off")]
        assert ((first == toy.index("hub")) == limit_choice).mean() > 0.99
        assert rates[0] < rates[1] < rates[2]
        assert abs(rates[2] - k / (k + 1)) < 0.015


def test_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        M.solve(chain(), np.zeros((1, 3)), 1.0)
    with pytest.raises(ValueError, match="successor"):
        M.from_edges({"a": ["b"]}, start="a")
