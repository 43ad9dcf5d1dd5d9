"""Worlds and agents: gymnasium gridworlds from the AI Safety Gridworlds, tabular learners, value iteration.

`make_world(name)` gives the tables the learners use; `gymnasium.make("seedbed/NAME-v0")` the environment.
See docs/worlds.md.
"""

from seedbed.worlds.registry import WORLDS, gym_id, make_world, register

# Each import registers that module's worlds (a new world: one line here).
from seedbed.worlds import safety  # noqa: F401  isort: skip
from seedbed.worlds import shutdown  # noqa: F401  isort: skip  (a gymnasium id; its own MDP, not a GridWorld)
from seedbed.worlds import coinrun  # noqa: F401  isort: skip  (a gymnasium id; procedural levels, not a GridWorld)

__all__ = ["WORLDS", "gym_id", "make_world", "register"]
