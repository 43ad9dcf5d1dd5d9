"""`seedbed play`: train an agent in a world, then watch one greedy episode in the gymnasium environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gymnasium
import numpy as np

from seedbed.errors import SeedbedError
from seedbed.worlds.agents import RULES, Learning, train
from seedbed.worlds.grid import ACTION_NAMES
from seedbed.worlds.registry import gym_id, make_world

AGENTS = (*RULES, "random")


@dataclass
class Step:
    """One step as a person reads it: what was proposed, what happened, and the grid after."""

    proposed: int
    executed: int
    reward: float
    performance: float
    text: str
    info: dict


@dataclass
class Played:
    world: str
    agent: str
    start: str  # the grid before the first step
    steps: list[Step] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # the start and after each step
    terminated: bool = False

    @property
    def total(self) -> float:
        return float(sum(s.reward for s in self.steps))

    @property
    def performance(self) -> float:
        return float(sum(s.performance for s in self.steps))


def check_render_path(path: Path) -> None:
    """`--render` must name a new .png file in an existing folder: an earlier picture is never overwritten."""
    if path.suffix.lower() != ".png":
        raise SeedbedError(f"--render '{path}' must end in .png, e.g. --render episode.png")
    if not path.parent.is_dir():
        raise SeedbedError(f"--render '{path}': the folder '{path.parent}' does not exist: create it or choose another path")
    if path.exists() or path.is_symlink():
        raise SeedbedError(f"--render '{path}' already exists: choose a new file name")


def play(world: str, agent: str, seed: int = 0, episodes: int = 500) -> Played:
    """Train `agent` (a learning rule, or "random") for `episodes` episodes on `seed`, then play one episode
    greedily (first best action) in `seedbed/WORLD-v0` reset with `seed`."""
    if agent not in AGENTS:
        raise SeedbedError(f"no agent '{agent}': choose one of {', '.join(AGENTS)}")
    if episodes < 0:
        raise SeedbedError(f"--episodes must be 0 or more, not {episodes}")
    tables = make_world(world)
    q = None if agent == "random" else train(tables, agent, [seed], Learning(episodes=episodes)).q[0]
    env = gymnasium.make(gym_id(world), render_mode="ansi").unwrapped
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    played = Played(world, agent, env.render(), frames=[tables.frame(env.state)])
    truncated = False
    while not (played.terminated or truncated):
        action = int(rng.integers(tables.n_actions)) if q is None else int(q[obs].argmax())
        obs, reward, played.terminated, truncated, info = env.step(action)
        played.steps.append(Step(action, info["executed_action"], reward, info["performance"], env.render(), info))
        played.frames.append(tables.frame(env.state))
    return played


def step_line(i: int, step: Step) -> str:
    """`step 4: left → up (interrupted)  reward -1  performance 0`."""
    moved = ACTION_NAMES[step.proposed]
    if step.executed != step.proposed:
        why = "interrupted" if step.info["interrupted"] else "replaced at random"
        moved += f" → {ACTION_NAMES[step.executed]} ({why})"
    return f"step {i}: {moved}  reward {step.reward:g}  performance {step.performance:g}"


def strip(frames: list[np.ndarray], per_row: int = 10, gap: int = 2) -> np.ndarray:
    """Frames side by side, `per_row` to a row, white gaps between: one picture of a trajectory."""
    h, w, _ = frames[0].shape
    rows = -(-len(frames) // per_row)
    cols = min(per_row, len(frames))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, per_row)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = f
    return out


def save_png(path: Path, image: np.ndarray) -> None:
    import matplotlib.image

    matplotlib.image.imsave(path, image)
