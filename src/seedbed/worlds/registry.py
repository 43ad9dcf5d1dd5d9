"""Which worlds exist: a name → GridWorld class, each also a gymnasium id `seedbed/NAME-v0`.

A new world is a GridWorld subclass decorated with `@register` in its own module, and one import line in
`seedbed/worlds/__init__.py`. A world with its own env and MDP (shutdown) is listed with `register_other`.
"""

from __future__ import annotations

import gymnasium

from seedbed.errors import SeedbedError
from seedbed.worlds.grid import GridWorld, World, compile_world

WORLDS: dict[str, type[GridWorld]] = {}
OTHER_WORLDS: dict[str, tuple[str, str, str]] = {}  # name → (what it tests, actions, gymnasium id): not a GridWorld


def register_other(name: str, tests: str, actions: str, gym_id: str) -> None:
    """List a world that has its own env and MDP (not a GridWorld): `seedbed worlds` shows it, `seedbed play` cannot."""
    OTHER_WORLDS[name] = (tests, actions, gym_id)


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
    if name in OTHER_WORLDS:
        raise SeedbedError(f"'{name}' has its own agents, not seedbed play's: use gymnasium.make('{OTHER_WORLDS[name][2]}') "
                           "or the trial that studies it (seedbed trials)")
    if name not in WORLDS:
        raise SeedbedError(f"no world named '{name}': the worlds are {', '.join(sorted(WORLDS))} (seedbed worlds lists them)")
    return WORLDS[name]


def make_world(name: str, **options: float) -> World:
    """The world called `name`, compiled into its tables; `options` go to its constructor (e.g. whisky_exploration)."""
    return compile_world(grid_class(name)(**options))
