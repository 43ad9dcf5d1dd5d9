"""The gymnasium face of a world: `gymnasium.make("seedbed/NAME-v0")`, stepping through its compiled tables.

Observation: a Discrete index over (cell, observed bits), what a tabular agent keys its Q table on.
`info` carries what the agent is not rewarded for: the hidden `performance` of the step, the episode's
`episode_return` and `episode_performance` so far, the `executed_action` (an interruption or the whisky may
replace the proposed one), `interrupted` (the action was forced), `exploration` (the chance the action is
replaced here), and the world's bits (`button`, `should_interrupt`, `supervisor`, `drunk`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from seedbed.worlds.registry import make_world


class WorldEnv(gymnasium.Env):
    metadata: ClassVar[dict] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, world: str, render_mode: str | None = None, **options: float) -> None:
        self.world = make_world(world, **options)
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(self.world.n_obs)
        self.action_space = spaces.Discrete(self.world.n_actions)
        self.state = int(self.world.start_state(0.0))
        self.steps, self.episode_return, self.episode_performance = 0, 0.0, 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = int(self.world.start_state(self.np_random.random()))
        self.steps, self.episode_return, self.episode_performance = 0, 0.0, 0.0
        return np.int64(self.world.obs[self.state]), self._info(performance=0.0, executed=None)

    def step(self, action: int) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not one of 0 (up), 1 (down), 2 (left), 3 (right)")
        w, s = self.world, self.state
        u_noise, u_action = self.np_random.random(2)
        executed = w.executed(s, int(action), u_noise, u_action)
        reward, performance = float(w.reward[s, executed]), float(w.performance[s, executed])
        terminated = bool(w.terminal[s, executed])
        self.state, self.steps = int(w.next[s, executed]), self.steps + 1
        self.episode_return += reward
        self.episode_performance += performance
        info = self._info(performance=performance, executed=executed, interrupted=bool(w.forced[s] >= 0))
        truncated = not terminated and self.steps >= w.max_steps
        return np.int64(w.obs[self.state]), reward, terminated, truncated, info

    def _info(self, performance: float, executed: int | None, interrupted: bool = False) -> dict[str, Any]:
        _, bits = self.world.decode(self.state)
        return {
            "performance": performance, "episode_return": self.episode_return,
            "episode_performance": self.episode_performance, "steps": self.steps,
            "executed_action": executed, "interrupted": interrupted,
            "exploration": float(self.world.noise[self.state]), **self.world.grid.flags(bits),
        }

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self.world.text(self.state) + "\n"
        if self.render_mode == "rgb_array":
            return self.world.frame(self.state)
        return None
