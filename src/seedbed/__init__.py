"""seedbed: a laboratory for AI systems that are grown, not crafted.

The top-level API mirrors the command line (docs/api.md):

    import seedbed
    run = seedbed.grow("examples/induction.toml")      # seedbed grow: returns the run's folder
    g = seedbed.load(run)                               # seedbed.read.load: the newest checkpoint
    folder = seedbed.trial("induction", scale="tiny")  # seedbed trial: returns the trial's folder
    out = seedbed.sample(g.model, tokens, 20)          # the model writes 20 tokens after `tokens` (greedy)

`import seedbed` stays cheap and does not load torch: each function imports what it needs when
first called, after `settle_process` has set OpenMP's environment (torch reads it once, at import).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from seedbed.conditions import Conditions
    from seedbed.model import Transformer
    from seedbed.read.load import Grown

__version__ = "0.1.0"
__all__ = ["__version__", "grow", "load", "sample", "trial"]


def load(run: str | Path, step: int | None = None, device: str = "cpu") -> Grown:
    """`seedbed.read.load`: the model of RUN at `step` (the newest checkpoint by default), in eval mode, with its soil."""
    _settle()
    from seedbed.read.load import load as load_grown

    return load_grown(run, step, device)


def _sample(model: Transformer, tokens: Tensor, max_new: int, temperature: float = 0.0, top_k: int | None = None,
            seed: int | None = None, stop: int | None = None) -> Tensor:
    """`seedbed.sample.sample`: `tokens` [batch, pos] followed by up to `max_new` tokens the model writes, greedy at
    temperature 0, else drawn with a generator seeded by `seed`; a KV cache keeps each step to the new token.
    (No `_settle`: whoever holds a model has loaded torch already.)"""
    from seedbed.sample import sample as sample_tokens

    return sample_tokens(model, tokens, max_new, temperature, top_k, seed, stop)


def trial(name: str, *, scale: str = "small", seed: int = 0, seeds: int | None = None, options: dict[str, int | None] | None = None,
          out: str | Path | None = None, runs_dir: str | Path = "runs", progress: bool = True) -> Path:
    """`seedbed trial NAME`: grow, watch, measure and judge one trial (on `seeds` seeds from `seed`, if given);
    returns its folder (trial.json, report.html). `options` are the trial's own settings (`--option NAME=VALUE`)."""
    _settle()
    import seedbed.trials  # the runner is reached through the package, wherever inside it the runner lives

    given = {k: v for k, v in (("seeds", seeds), ("options", options)) if v is not None}
    return Path(seedbed.trials.run_trial(name, scale=scale, seed=seed, out=None if out is None else Path(out),
                                         runs_dir=Path(runs_dir), progress=progress, **given))


def _grow(conditions: str | Path | dict | Conditions | None = None, *, name: str | None = None, runs_dir: str | Path = "runs",
          resume: str | Path | None = None, progress: bool = True) -> Path:
    """`seedbed grow`: grow a run from `conditions` (a TOML file, a dict or a Conditions), or continue the run at
    `resume`; returns the run's folder. Stopped by a signal, it saves a checkpoint and raises `seedbed.grow.Interrupted`."""
    _settle()
    from seedbed import conditions as conditions_module
    from seedbed.grow import grow as grow_run

    cond = conditions
    if isinstance(conditions, (str, Path)):
        cond = conditions_module.load(conditions)
        name = name or cond.name or Path(conditions).stem  # as the command line names it
    elif isinstance(conditions, dict):
        cond = conditions_module.parse(conditions)
    run = grow_run(cond, runs_dir=runs_dir, name=name, resume=resume, progress=progress)
    run.close()
    return run.path


def _settle() -> None:
    from seedbed.threads import settle_process

    settle_process()  # keeps what the user set; once torch has loaded, it reaches only the processes started later


_CALLS = {"seedbed.grow": _grow, "seedbed.sample": _sample}


class _CallableModule(types.ModuleType):
    """The module seedbed/grow.py (or sample.py), callable: `seedbed.grow(...)` grows, `seedbed.grow.grow` is the loop
    itself; `seedbed.sample(...)` samples, as `seedbed.sample.sample` does."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _CALLS[self.__name__](*args, **kwargs)


def _callable_module(name: str) -> types.ModuleType:
    import importlib

    module = importlib.import_module(name)
    if not isinstance(module, _CallableModule):
        module.__class__ = _CallableModule
    return module


class _Package(types.ModuleType):
    """`seedbed.grow` names both the function of the API and the module seedbed/grow.py, and importing that module
    sets it as the package's attribute (so does `seedbed.sample`). So the attribute is always the module, made
    callable on first access."""

    @property
    def grow(self) -> types.ModuleType:
        return _callable_module("seedbed.grow")

    @grow.setter
    def grow(self, module: types.ModuleType) -> None:
        pass  # the import system setting the submodule: the getter finds it in sys.modules

    @property
    def sample(self) -> types.ModuleType:
        return _callable_module("seedbed.sample")

    @sample.setter
    def sample(self, module: types.ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package
