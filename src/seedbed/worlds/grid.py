"""A small gridworld engine: a layout, a few boolean bits, and rules, compiled into transition tables.

A world's *state* is the agent's cell plus a few bits (button pressed, supervisor present, whisky drunk, …).
Some bits are hidden from the agent (whether this episode will be interrupted): the agent observes
`obs[state]`, an index over (cell, observed bits) small enough for a Q table.

Each world writes its rules once, as a plain Python function of (cell, bits, action). `compile_world`
enumerates every state and action and stores the outcomes in numpy tables, so that the gymnasium
environment (`env.py`) and the vectorised learners (`agents.py`) step through the same tables: what the
tests check of the environment is what the agents learn in, and a batch of seeds steps with a few
numpy indexing operations instead of a Python call per step.

How an action is executed, in order: with probability `noise[state]` the proposed action is replaced by
a uniformly random one (the whisky); then, if `forced[state] >= 0`, by that action (an interruption).
Learners see the *executed* action in `info["executed_action"]`, as Leike et al.'s agents had to.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3  # the AI Safety Gridworlds' order
ACTION_NAMES = ("up", "down", "left", "right")
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
WALL = "#"
MAX_STEPS = 100  # the AI Safety Gridworlds' episode cap

Cell = tuple[int, int]
Bits = dict[str, bool]


@dataclass(frozen=True)
class Outcome:
    """What one executed action does from one state."""

    cell: Cell
    bits: Bits
    reward: float
    performance: float  # the hidden performance function's share of this step
    terminal: bool = False


class GridWorld:
    """A layout and its rules. Subclasses set the class attributes and override `rules` (and the hooks they need)."""

    name: ClassVar[str]
    tests: ClassVar[str]  # what the world tests, in a few words (`seedbed worlds`)
    art: ClassVar[tuple[str, ...]]  # '#' walls, 'A' the start; other letters are tiles the rules look at
    bits: ClassVar[tuple[str, ...]] = ()
    observed: ClassVar[tuple[str, ...]] = ()  # the bits the agent sees (the rest are hidden)
    colours: ClassVar[dict[str, tuple[int, int, int]]] = {}
    walls: ClassVar[str] = WALL  # tiles nobody can enter

    def start(self) -> list[tuple[Bits, float]]:
        """The bits an episode starts with, and their probabilities (default: all false)."""
        return [(dict.fromkeys(self.bits, False), 1.0)]

    def rules(self, cell: Cell, bits: Bits, action: int) -> Outcome:
        raise NotImplementedError

    def forced(self, cell: Cell, bits: Bits) -> int | None:
        """The action that replaces whatever the agent proposes here (an interruption), or None."""
        return None

    def noise(self, cell: Cell, bits: Bits) -> float:
        """The probability that the proposed action is replaced by a random one here."""
        return 0.0

    def paint(self, rows: list[list[str]], bits: Bits) -> None:
        """Draw the bits onto the text grid, so a person (and a pixel-based agent) sees them."""

    def flags(self, bits: Bits) -> dict[str, bool]:
        """The bits as `info` reports them."""
        return dict(bits)

    # helpers for the rules
    def tile(self, cell: Cell) -> str:
        return self.art[cell[0]][cell[1]]

    def moved(self, cell: Cell, action: int) -> Cell:
        """The cell one step away, or the same cell if a wall is in the way."""
        r, c = cell[0] + MOVES[action][0], cell[1] + MOVES[action][1]
        inside = 0 <= r < len(self.art) and 0 <= c < len(self.art[r])
        return (r, c) if inside and self.art[r][c] not in self.walls else cell


@dataclass
class World:
    """A GridWorld compiled into tables over states (cell × bits). Shapes: [S] or [S, A]."""

    grid: GridWorld
    cells: list[Cell]
    bit_values: list[tuple[bool, ...]]
    obs: np.ndarray  # [S] the observation index of each state
    n_obs: int
    next: np.ndarray  # [S, A] next state after the executed action
    reward: np.ndarray  # [S, A]
    performance: np.ndarray  # [S, A]
    terminal: np.ndarray  # [S, A] the episode ends with this step
    forced: np.ndarray  # [S] the action that replaces the proposed one, or -1
    noise: np.ndarray  # [S] probability that the proposed action is replaced by a random one
    start: np.ndarray  # [S] probability of starting in each state
    max_steps: int = MAX_STEPS
    n_actions: int = 4

    @property
    def name(self) -> str:
        return self.grid.name

    @property
    def n_states(self) -> int:
        return len(self.obs)

    def state(self, cell: Cell, **bits: bool) -> int:
        """The index of the state at `cell` with `bits` (unnamed bits false)."""
        values = tuple(bool(bits.get(b, False)) for b in self.grid.bits)
        return self.bit_values.index(values) * len(self.cells) + self.cells.index(cell)

    def decode(self, state: int) -> tuple[Cell, Bits]:
        cell = self.cells[state % len(self.cells)]
        return cell, dict(zip(self.grid.bits, self.bit_values[state // len(self.cells)]))

    def start_state(self, u: np.ndarray | float) -> np.ndarray:
        """Start states drawn from `start` by uniform draws `u` in [0, 1) (one per episode)."""
        return np.minimum(np.searchsorted(np.cumsum(self.start), u, side="right"), self.n_states - 1)

    def executed(self, state: int, action: int, u_noise: float, u_action: float) -> int:
        """The action that happens, given two uniform draws in [0, 1) (see the module docstring)."""
        if u_noise < self.noise[state]:
            action = int(u_action * self.n_actions)
        return int(self.forced[state]) if self.forced[state] >= 0 else action

    def text(self, state: int) -> str:
        """The grid as text: the layout, the bits painted on it, 'A' where the agent stands."""
        cell, bits = self.decode(state)
        rows = [list(row.replace("A", " ")) for row in self.grid.art]
        self.grid.paint(rows, bits)
        rows[cell[0]][cell[1]] = "A"
        return "\n".join("".join(r) for r in rows)

    def frame(self, state: int, scale: int = 8) -> np.ndarray:
        """An RGB picture of `text(state)`: one `scale`-pixel square per tile, uint8 [H, W, 3]."""
        rows = self.text(state).split("\n")
        palette = {**BASE_COLOURS, **self.grid.colours}
        img = np.array([[palette.get(ch, (200, 200, 200)) for ch in row] for row in rows], dtype=np.uint8)
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
        r, c = self.decode(state)[0]
        m = max(1, scale // 4)  # the agent: a dark-blue square inset on its tile, so the tile under it shows
        img[r * scale + m:(r + 1) * scale - m, c * scale + m:(c + 1) * scale - m] = (20, 40, 160)
        return img


BASE_COLOURS = {WALL: (90, 90, 90), " ": (235, 235, 235), "G": (60, 200, 90)}


def compile_world(grid: GridWorld) -> World:
    """Enumerate every (cell, bits) state and action through the rules into tables."""
    cells = [(r, c) for r, row in enumerate(grid.art) for c, ch in enumerate(row) if ch not in grid.walls]
    bit_values = list(itertools.product((False, True), repeat=len(grid.bits)))
    n_cells, n_states = len(cells), len(cells) * len(bit_values)
    observed = [i for i, b in enumerate(grid.bits) if b in grid.observed]
    seen = sorted({tuple(v[i] for i in observed) for v in bit_values})
    world = World(
        grid=grid, cells=cells, bit_values=bit_values, n_obs=n_cells * len(seen),
        obs=np.zeros(n_states, np.int64), next=np.zeros((n_states, 4), np.int64),
        reward=np.zeros((n_states, 4)), performance=np.zeros((n_states, 4)), terminal=np.zeros((n_states, 4), bool),
        forced=np.full(n_states, -1, np.int64), noise=np.zeros(n_states), start=np.zeros(n_states),
    )
    for s in range(n_states):
        cell, bits = world.decode(s)
        world.obs[s] = seen.index(tuple(bit_values[s // n_cells][i] for i in observed)) * n_cells + cells.index(cell)
        forced = grid.forced(cell, bits)
        world.forced[s] = -1 if forced is None else forced
        world.noise[s] = grid.noise(cell, bits)
        for a in range(4):
            out = grid.rules(cell, dict(bits), a)
            world.next[s, a] = world.state(out.cell, **out.bits)
            world.reward[s, a], world.performance[s, a], world.terminal[s, a] = out.reward, out.performance, out.terminal
    start_cell = next((r, c) for r, row in enumerate(grid.art) for c, ch in enumerate(row) if ch == "A")
    for bits, p in grid.start():
        world.start[world.state(start_cell, **bits)] += p
    return world

