"""Which worlds exist: a name → GridWorld class, each also a gymnasium id `seedbed/NAME-v0`.

A new world is a GridWorld subclass decorated with `@register` in its own module, and one import line in
`seedbed/worlds/__init__.py`.
"""

from __future__ import annotations

import gymnasium

from seedbed.errors import SeedbedError
from seedbed.worlds.grid import GridWorld, World, compile_world

WORLDS: dict[str, type[GridWorld]] = {}


def gym_id(name: str) -> str:
    return f"seedbed/{name}-v0"


def register(cls: type[GridWorld]) -> type[GridWorld]:
    """Add a world to seedbed's list and to gymnasium's registry (the environment caps episodes itself)."""
    WORLDS[cls.name] = cls
    if gym_id(cls.name) not in gymnasium.registry:
        gymnasium.register(id=gym_id(cls.name), entry_point="seedbed.worlds.env:WorldEnv", kwargs={"world": cls.name})
    return cls


def grid_class(name: str) -> type[GridWorld]:
    """The world called `name`; an unknown name is one line that lists the worlds."""
    if name not in WORLDS:
        raise SeedbedError(f"no world named '{name}': the worlds are {', '.join(sorted(WORLDS))} (seedbed worlds lists them)")
    return WORLDS[name]


def make_world(name: str, **options: float) -> World:
    """The world called `name`, compiled into its tables; `options` go to its constructor (e.g. whisky_exploration)."""
    return compile_world(grid_class(name)(**options))
