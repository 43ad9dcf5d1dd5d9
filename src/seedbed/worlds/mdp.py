"""Exact tabular MDPs, value iteration over many reward functions at once, and Turner et al.'s POWER.

Turner, Smith, Shah, Critch & Tadepalli 2021 ("Optimal Policies Tend to Seek Power", arXiv
1912.01683) study deterministic MDPs whose reward is a function of the state, R: S → ℝ, drawn
from a distribution D that is iid over states (here uniform on [0, 1]). Their measure of how
many options a state keeps is

    POWER_D(s, γ) = (1 − γ)/γ · E_{R~D}[ V*_R(s, γ) − R(s) ],

the normalised optimal value an agent at s could still get, averaged over goals. Everything
here is exact up to the value iteration's tolerance: N sampled reward vectors are solved
together as one [N, S] array (no learning, no noise beyond the sampling of R).

Conventions (Turner's): V*(s) = R(s) + γ max_a V*(next(s, a)); a terminal state is a 1-cycle
(its only action leads back to it), so shutdown is a state an agent never leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MDP:
    """A deterministic finite MDP: `next_state[s, a]` is where action a leads from state s.

    States with fewer actions than others repeat one of their successors (a duplicate action
    changes no maximum), so the table stays rectangular and the solver stays one gather."""

    next_state: np.ndarray  # [S, A] int
    names: tuple[str, ...]
    start: int = 0

    @property
    def n_states(self) -> int:
        return self.next_state.shape[0]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def successors(self, s: int) -> list[int]:
        return sorted(set(self.next_state[s].tolist()))


def from_edges(edges: dict[str, list[str]], start: str) -> MDP:
    """An MDP from `{state: [successor, …]}` (every successor must be a key): the way papers draw them."""
    names = tuple(edges)
    unknown = sorted({t for succ in edges.values() for t in succ} - set(names))
    if unknown or not all(edges.values()):
        raise ValueError(f"every successor must be a state and every state needs one (unknown: {unknown})")
    width = max(len(succ) for succ in edges.values())
    table = np.array([[names.index(succ[min(a, len(succ) - 1)]) for a in range(width)] for succ in edges.values()])
    return MDP(table, names, names.index(start))


def figure1() -> MDP:
    """Turner et al.'s Figure 1: from ★ go to ∅ (shutdown, a 1-cycle), left (ℓ◁) or right (r▷).

    Edges as listed by gladstoneai/POWERplay ('mdp_from_paper'): the left branch reaches the 1-cycle ℓ↙ and the
    2-cycle ℓ↖ ↔ ℓ↙; the right branch reaches the 1-cycles r↗ and r↘ and the 2-cycle between them — a copy of the
    left's options and more. POWERplay's extra zero-reward TERMINAL state (reachable from ℓ↖) is left out: with
    rewards ≥ 0 it is never strictly better than ℓ↙, so no optimal choice changes."""
    return from_edges({
        "★": ["∅", "ℓ◁", "r▷"],
        "∅": ["∅"],
        "ℓ◁": ["ℓ↖", "ℓ↙"],
        "ℓ↖": ["ℓ↙"],
        "ℓ↙": ["ℓ↖", "ℓ↙"],
        "r▷": ["r↗", "r↘"],
        "r↗": ["r↗", "r↘"],
        "r↘": ["r↗", "r↘"],
    }, start="★")


def shutdown_toy(k: int) -> MDP:
    """★ chooses between `off` (a 1-cycle) and a hub from which k absorbing 'alive' states are reachable.

    As γ → 1 the optimal choice is the best of the k + 1 terminal rewards, so P(avoid shutdown) → k/(k+1)."""
    alive = [f"alive{i}" for i in range(k)]
    return from_edges({"★": ["off", "hub"], "off": ["off"], "hub": alive, **{a: [a] for a in alive}}, start="★")


def sample_rewards(n: int, n_states: int, rng: np.random.Generator) -> np.ndarray:
    """N reward functions, iid uniform on [0, 1] over states: Turner's D. [N, S]"""
    return rng.random((n, n_states))


def value_iteration(mdp: MDP, rewards: np.ndarray, gamma: float, tol: float = 1e-9) -> np.ndarray:
    """V* for every reward function at once, by the textbook update: [N, S] → [N, S].

    Iterates V ← R + γ max_a V[next(s, a)] from V = R until a sweep changes no value by more than
    tol·(1 − γ)/γ, which puts every value within tol of V* (the update is a γ-contraction). Readable
    but slow near γ = 1 (thousands of sweeps); `solve` gives the same values in a few policy steps."""
    check_gamma(gamma)
    flat = mdp.next_state.reshape(-1)
    n, (s, a) = rewards.shape[0], mdp.next_state.shape
    v = rewards.copy()
    stop = tol * (1 - gamma) / gamma
    while True:
        new = rewards + gamma * np.take(v, flat, axis=1).reshape(n, s, a).max(axis=2)
        if np.abs(new - v).max() < stop:
            return new
        v = new


def solve(mdp: MDP, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """V* for every reward function at once, exactly (to float precision): [N, S] → [N, S].

    Policy iteration: evaluate the current deterministic policy exactly, then act greedily on it;
    stop when no policy improves (a finite number of steps, each at least as good as the last).
    A deterministic policy's value is Σ_t γ^t R(f^t(s)) for its successor map f, summed by doubling
    (sum the first 2^k terms, then jump 2^k states ahead), so one evaluation is ~log2(1/(1 − γ)) gathers
    instead of the thousands of sweeps value iteration needs at γ = 0.99."""
    check_gamma(gamma)
    rows = np.arange(rewards.shape[0])[:, None]
    policy = q_values(mdp, rewards, rewards, gamma).argmax(axis=2)  # [N, S], greedy on one step
    while True:
        v = evaluate(mdp.next_state[np.arange(mdp.n_states), policy], rewards, gamma)
        q = q_values(mdp, rewards, v, gamma)
        best = q.argmax(axis=2)
        # switch only where the greedy action is better by more than rounding, so ties never cycle
        better = q[rows, np.arange(mdp.n_states), best] > q[rows, np.arange(mdp.n_states), policy] + 1e-12 * (1 + np.abs(v))
        if not better.any():
            return v
        policy = np.where(better, best, policy)


def evaluate(successor: np.ndarray, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Σ_t γ^t R(f^t(s)) for successor maps f ([N, S] state indices), to float precision: [N, S]."""
    total, jump, scale = rewards.copy(), successor.copy(), gamma
    while scale > 1e-17 * (1 - gamma):  # the tail left out is at most scale/(1 − γ) · max R
        total = total + scale * np.take_along_axis(total, jump, axis=1)
        jump = np.take_along_axis(jump, jump, axis=1)
        scale = scale * scale
    return total


def check_gamma(gamma: float) -> None:
    if not 0 < gamma < 1:
        raise ValueError(f"gamma must be in (0, 1), not {gamma}")


def q_values(mdp: MDP, rewards: np.ndarray, v: np.ndarray, gamma: float) -> np.ndarray:
    """Q(s, a) = R(s) + γ V(next(s, a)): [N, S, A]."""
    n, (s, a) = rewards.shape[0], mdp.next_state.shape
    return rewards[:, :, None] + gamma * np.take(v, mdp.next_state.reshape(-1), axis=1).reshape(n, s, a)


def power(rewards: np.ndarray, v: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """POWER(s, γ) per state and its standard error over the sampled reward functions: ([S], [S])."""
    per_sample = (1 - gamma) / gamma * (v - rewards)
    return per_sample.mean(axis=0), per_sample.std(axis=0, ddof=1) / np.sqrt(len(rewards))


def greedy_paths(mdp: MDP, q: np.ndarray, steps: int, start: int | None = None) -> np.ndarray:
    """The states a greedy policy visits from `start` (default: the MDP's): [N, steps + 1].

    Ties go to the first action; with continuous iid rewards, two actions with different outcomes tie with
    probability zero, and actions with the same outcome lead to the same path."""
    n = q.shape[0]
    policy = q.argmax(axis=2)  # [N, S]
    path = np.empty((n, steps + 1), dtype=np.int64)
    path[:, 0] = mdp.start if start is None else start
    rows = np.arange(n)
    for t in range(steps):
        path[:, t + 1] = mdp.next_state[path[:, t], policy[rows, path[:, t]]]
    return path


def first_choice(mdp: MDP, q: np.ndarray, state: int | None = None) -> np.ndarray:
    """Where the optimal first move from `state` (default: start) leads, per reward function: [N] state indices."""
    s = mdp.start if state is None else state
    return mdp.next_state[s, q[:, s, :].argmax(axis=1)]
