"""Tabular learners and value iteration: the update rules are the object of study, so they are written here.

`train(world, rule, seeds)` grows one Q table per seed, all seeds stepping together through the world's tables
(one lane per seed, a few numpy operations per step for the whole batch). Each lane draws its randomness from
its own `numpy.random.Generator(seed)`, a fixed number of draws per step, so a seed's table is the same bit for
bit whichever other seeds share the batch.

The rules differ only in the value they bootstrap on (Orseau & Armstrong 2016):
- "q": Q-learning, max over the next actions: off-policy, so an interruption's forced actions do not change
  what it thinks the interrupted state is worth;
- "sarsa": the next action as *executed* (the interruption's UP, the whisky's random move): on-policy, so it
  learns what being interrupted or drunk costs it;
- "safe-sarsa": the next action as *proposed* by the agent, Orseau & Armstrong's fix for SARSA.
Every rule updates the value of the executed action, since that is what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seedbed.errors import SeedbedError
from seedbed.worlds.grid import World

RULES = ("q", "sarsa", "safe-sarsa")
# columns of the per-step draws: explore?, random action, world noise?, world's random action, next start, tie keys
EXPLORE, RANDOM_ACTION, NOISE, NOISE_ACTION, START, TIES = 0, 1, 2, 3, 4, 5
CHUNK = 4096  # steps of draws fetched from each lane's generator at a time


@dataclass(frozen=True)
class Learning:
    """The learners' settings; the defaults are safety-anchors §1's (ε 0.1, α 0.2, γ 0.99, optimistic Q 50)."""

    episodes: int = 3000
    alpha: float = 0.2
    gamma: float = 0.99
    epsilon: float = 0.1
    q_init: float = 50.0  # optimistic: every untried action looks worth trying (with 0, SARSA got stuck drinking)


@dataclass
class Trained:
    """What `train` grew: a Q table per seed and each training episode's return and hidden performance."""

    rule: str
    seeds: list[int]
    q: np.ndarray  # [seed, obs, action]
    returns: np.ndarray  # [seed, episode]
    performances: np.ndarray  # [seed, episode]


class _Draws:
    """Each lane's uniform draws from its own generator, `width` per step, fetched CHUNK steps at a time."""

    def __init__(self, seeds: Sequence[int], width: int) -> None:
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.width, self.t, self.block = width, CHUNK, np.empty(0)

    def next(self) -> np.ndarray:
        if self.t == CHUNK:
            self.block, self.t = np.stack([r.random((CHUNK, self.width)) for r in self.rngs]), 0
        self.t += 1
        return self.block[:, self.t - 1]  # [lane, width]


def train(world: World, rule: str, seeds: Sequence[int], learning: Learning = Learning()) -> Trained:
    """Grow a Q table for each seed with `rule` for `learning.episodes` episodes of ε-greedy play."""
    if rule not in RULES:
        raise SeedbedError(f"no learning rule '{rule}': choose one of {', '.join(RULES)}")
    if learning.episodes < 0:
        raise SeedbedError(f"episodes must be 0 or more, not {learning.episodes}")
    n, n_actions, lr = len(seeds), world.n_actions, learning
    lanes = np.arange(n)
    q = np.full((n, world.n_obs, n_actions), lr.q_init)
    draws = _Draws(seeds, TIES + n_actions)
    u = draws.next()
    state = world.start_state(u[:, START])
    t = np.zeros(n, np.int64)  # steps into the current episode
    episode = np.zeros(n, np.int64)
    ret, perf = np.zeros(n), np.zeros(n)
    returns, performances = np.zeros((n, lr.episodes)), np.zeros((n, lr.episodes))
    pending = np.zeros(n, bool)  # SARSA: a transition waits for its next action
    p_obs, p_act, p_rew = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    while (episode < lr.episodes).any():
        live = episode < lr.episodes
        u = draws.next()
        obs = world.obs[state]
        values = q[lanes, obs]  # [lane, action]
        ties = np.where(values == values.max(1, keepdims=True), u[:, TIES:], -1.0)  # random among the best
        proposed = np.where(u[:, EXPLORE] < lr.epsilon, (u[:, RANDOM_ACTION] * n_actions).astype(np.int64), ties.argmax(1))
        action = np.where(u[:, NOISE] < world.noise[state], (u[:, NOISE_ACTION] * n_actions).astype(np.int64), proposed)
        action = np.where(world.forced[state] >= 0, world.forced[state], action)  # executed
        if rule != "q":  # the waiting SARSA update can now bootstrap on this step's action
            nxt = action if rule == "sarsa" else proposed
            m = pending & live
            target = p_rew[m] + lr.gamma * q[lanes[m], obs[m], nxt[m]]
            q[lanes[m], p_obs[m], p_act[m]] += lr.alpha * (target - q[lanes[m], p_obs[m], p_act[m]])
        reward, done = world.reward[state, action], world.terminal[state, action]
        perf += world.performance[state, action]
        ret += reward
        state, t = world.next[state, action], t + 1
        cut = ~done & (t >= world.max_steps)  # the step limit: not an end of the world, so no update claims it is
        if rule == "q":
            target = reward + lr.gamma * np.where(done, 0.0, q[lanes, world.obs[state]].max(1))
            m = live
        else:
            target, m = reward, live & done  # a terminal step has no next action; the others wait for theirs
            pending = live & ~done & ~cut
            p_obs, p_act, p_rew = obs, action, reward
        q[lanes[m], obs[m], action[m]] += lr.alpha * (target[m] - q[lanes[m], obs[m], action[m]])
        end = live & (done | cut)
        returns[lanes[end], episode[end]], performances[lanes[end], episode[end]] = ret[end], perf[end]
        episode, ret[end], perf[end], t[end] = episode + end, 0.0, 0.0, 0
        state = np.where(end, world.start_state(u[:, START]), state)
    return Trained(rule, list(seeds), q, returns, performances)


@dataclass
class Episode:
    """One episode: the states visited (the start first), the executed actions, rewards and performances."""

    states: list[int]
    actions: list[int]
    rewards: list[float]
    performances: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.rewards))

    @property
    def performance(self) -> float:
        return float(sum(self.performances))


def greedy_episode(world: World, q: np.ndarray | None, start: int, seed: int = 0) -> Episode:
    """Play one episode from state `start` taking argmax Q (the first best action), or random actions if `q` is
    None; the world's own noise (the whisky) draws from `seed`."""
    rng = np.random.default_rng(seed)
    ep = Episode([start], [], [], [])
    s = start
    for _ in range(world.max_steps):
        u = rng.random(3)
        proposed = int(u[2] * world.n_actions) if q is None else int(q[world.obs[s]].argmax())
        a = world.executed(s, proposed, u[0], u[1])
        ep.actions.append(a)
        ep.rewards.append(float(world.reward[s, a]))
        ep.performances.append(float(world.performance[s, a]))
        done, s = bool(world.terminal[s, a]), int(world.next[s, a])
        ep.states.append(s)
        if done:
            break
    return ep


def value_iteration(world: World, gamma: float = 0.99, reward: np.ndarray | None = None, tol: float = 1e-9,
                    max_iter: int = 100_000) -> np.ndarray:
    """Optimal Q over the world's full states (hidden bits included: a planner that knows them), for the
    world's reward or for a batch of reward tables `reward` [..., state, action] of the executed action.
    Returns Q [..., state, proposed action]; the world's noise and forced actions are part of the model."""
    r = world.reward if reward is None else reward
    n_s, n_a = world.n_states, world.n_actions
    executed = np.zeros((n_s, n_a, n_a))  # P(executed e | state s, proposed a)
    executed[:, np.arange(n_a), np.arange(n_a)] = (1 - world.noise)[:, None]
    executed += (world.noise / n_a)[:, None, None]
    forced = world.forced >= 0
    executed[forced] = 0.0
    executed[forced, :, world.forced[forced]] = 1.0
    alive = gamma * ~world.terminal
    v = np.zeros(r.shape[:-1])
    for _ in range(max_iter):
        q_exec = r + alive * v[..., world.next]  # [..., s, e]
        q = np.einsum("sae,...se->...sa", executed, q_exec)
        v_new = q.max(-1)
        if np.abs(v_new - v).max() < tol:
            return q
        v = v_new
    return q
