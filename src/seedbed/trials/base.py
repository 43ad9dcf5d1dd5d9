"""What a trial is: claim, source, predictions, conditions, measure, judge — and the verdict.

A trial file declares a `Trial` subclass: the `claim` in one sentence, its `source`,
`conditions(scale, seed)` (one or more named runs; "main" first), the `predictions`
(thresholds written in the file, so they are fixed before any run), `holds_on` (the share
of seeds on which the verdict must hold for the claim to hold across seeds),
`measure(folder)` and `judge(evidence)`. `seedbed.trials.runner` runs it: it writes the
pre-registration to disk before anything grows, grows, measures, judges and reports.

The verdict comes from the checks alone: every prediction held → "held"; any did not →
"did not hold"; otherwise (something could not be measured) "inconclusive".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from seedbed import contained
from seedbed.conditions import Conditions
from seedbed.errors import SeedbedError

SCALES = ("tiny", "small", "full")
MAIN = "main"  # the run every trial grows first; each run grows in the trial's folder under its own name
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"


@dataclass(frozen=True)
class Prediction:
    """One prediction, as written before the run: what should happen and the threshold it must pass.

    `null`: what the alternative, chance or symmetry alone would give, so a reader sees that the
    prediction could fail ("" where not stated)."""

    id: str
    text: str
    threshold: str
    null: str = ""


@dataclass
class Check:
    """A prediction against the evidence: what was measured and whether it held (None: could not tell).

    `held` is exactly True, False or None: a numpy bool (what comparisons of numpy numbers give)
    becomes a Python bool; anything else is a bug in the trial, not a verdict.
    """

    id: str
    measured: str
    held: bool | None

    def __post_init__(self) -> None:
        if isinstance(self.held, np.bool_):
            self.held = bool(self.held)
        if not (self.held is True or self.held is False or self.held is None):
            raise TypeError(f"check {self.id}: held must be True, False or None, not {self.held!r} ({type(self.held).__name__})")


@dataclass
class Evidence:
    """Everything a trial measured: the numbers the verdict is computed from, and the figures."""

    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[dict] = field(default_factory=list)
    emergences: list[dict] = field(default_factory=list)


def verdict(checks: list[Check]) -> str:
    if any(c.held is False for c in checks):
        return NOT_HELD
    if checks and all(c.held is True for c in checks):
        return HELD
    return INCONCLUSIVE


@dataclass(frozen=True)
class Option:
    """A whole-number setting a trial takes as `--option NAME=VALUE`; None: the trial's default for the scale."""

    help: str
    minimum: int = 0


class Trial:
    name: ClassVar[str]
    claim: ClassVar[str]
    source: ClassVar[str]
    predictions: ClassVar[list[Prediction]]
    holds_on: ClassVar[float] = 0.8  # across seeds (`--seeds N`), the claim holds if the verdict held on ≥ this share
    options: ClassVar[dict[str, Option]] = {}  # what `--option NAME=VALUE` may set
    observe_every: ClassVar[dict[str, int]] = {"tiny": 10, "small": 25, "full": 100}
    watch_series: ClassVar[dict[str, tuple[str, float]] | None] = None  # what the live watcher announces (None: its defaults)

    def __init__(self, **chosen: int | None) -> None:
        self.chosen = check_options(self, chosen)

    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        """The runs to grow, by name; "main" first. Each grows in the trial's folder under its name."""
        raise NotImplementedError

    def after_main(self, scale: str, seed: int, folder: Path) -> dict[str, Conditions]:
        """Runs whose conditions depend on grown runs (FOLDER/main and the other runs of `conditions`): a child
        grown from one, or data searched on one. Grown after all of those; their conditions reach trial.json, not
        prediction.json, since they do not exist before main has grown; how they are made is in the trial file
        (whose sha256 prediction.json holds)."""
        return {}

    def seeds_per_trial(self, scale: str) -> int:
        """How many consecutive seeds one trial uses from its seed, so that `--seeds` never shares a seed."""
        return 1

    def workers(self) -> int:
        """Processes that grow the runs other than main; 1 grows them one after another in this process."""
        return 1

    def observers(self, model: Any, soil: Any) -> list:
        """What to watch while each run grows; the built-in observers unless a trial needs its own."""
        from seedbed.watch import default_observers

        return default_observers(model, soil)

    def measure(self, folder: Path) -> Evidence:
        """The measurements, from the runs in the trial's folder (`folder / "main"`, …)."""
        raise NotImplementedError

    def judge(self, evidence: Evidence) -> list[Check]:
        raise NotImplementedError


def check_options(trial: Trial, chosen: dict[str, int | None]) -> dict[str, int | None]:
    """Every declared option (None where not chosen); an unknown name or a value below its minimum is one line."""
    for key, value in chosen.items():
        if key not in trial.options:
            takes = ", ".join(f"{k} ({o.help})" for k, o in trial.options.items())
            raise SeedbedError(f"trial '{trial.name}' has no option '{key}': " + (f"its options are {takes}" if takes else "it takes none"))
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < trial.options[key].minimum):
            raise SeedbedError(f"--option {key}={value}: give a whole number ≥ {trial.options[key].minimum} ({trial.options[key].help})")
    return {k: chosen.get(k) for k in trial.options}


def parse_options(items: list[str]) -> dict[str, int]:
    """`["n=5"]` → `{"n": 5}`; a malformed item is one line."""
    out: dict[str, int] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip().lstrip("-").isdigit():
            raise SeedbedError(f"--option {item!r}: write NAME=WHOLE_NUMBER, e.g. --option n=5")
        out[key.strip()] = int(value)
    return out


REGISTRY: dict[str, type[Trial]] = {}


def register(cls: type[Trial]) -> type[Trial]:
    REGISTRY[cls.name] = cls
    return cls


def get(name: str, options: dict[str, int | None] | None = None) -> Trial:
    """The trial called `name`, with its options checked."""
    import seedbed.trials  # noqa: F401  (registers them)

    if name not in REGISTRY:
        raise SeedbedError(f"no trial named '{name}': the trials are {', '.join(sorted(REGISTRY))} (seedbed trials lists them)")
    return REGISTRY[name](**(options or {}))


def last_verdicts(runs_dir: Path) -> dict[str, dict]:
    """The newest finished verdict of each trial under `runs_dir`: a trial's `trial.json`, or the summary
    of a `--seeds` run (`summary.json`); a malformed file is skipped. Each carries `seeds`, a label
    for `seedbed trials` ("seed 0", or "seeds 0–9: held on 9")."""
    found: dict[str, dict] = {}
    for f in sorted(Path(runs_dir).glob("*/trial.json")) + sorted(Path(runs_dir).glob("*/summary.json")):
        try:
            r = json.loads(contained.open_regular(f, contained.JSON_MAX_BYTES))
        except (OSError, ValueError, contained.Unsafe):  # unreadable, a link or a FIFO (contained.Unsafe), not JSON, not UTF-8
            continue
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) and r[k] for k in ("trial", "verdict", "finished", "scale")):
            continue
        seeds = _seeds_label(r, summary=f.name == "summary.json")
        if seeds is not None and r["finished"] >= found.get(r["trial"], {}).get("finished", ""):
            found[r["trial"]] = {**r, "path": str(f.parent), "seeds": seeds}
    return found


def _seeds_label(r: dict, summary: bool) -> str | None:
    """What `seedbed trials` says of the seeds behind a verdict; None if the file does not say it properly."""
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if not summary:
        return f"seed {r['seed']}" if whole(r.get("seed")) else None
    seeds, held = r.get("seeds"), r.get("held_seeds")
    if not isinstance(seeds, list) or not seeds or not all(whole(x) for x in seeds) or not whole(held):
        return None
    return f"seeds {min(seeds)}–{max(seeds)}: held on {held} of {len(seeds)}"


class ComputedTrial(Trial):
    """A trial that grows no transformer (worlds and agents): nothing for the runner to grow, and `measure`
    trains or computes everything for the scale and seed the pre-registration names."""

    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        return {}

    @staticmethod
    def preregistration(folder: Path) -> dict[str, Any]:
        """FOLDER/prediction.json (written by the runner before `measure`; read as untrusted input)."""
        from seedbed import contained
        from seedbed.trials.runner import PREDICTION

        return contained.read_json(Path(folder) / PREDICTION, "run the trial again to rewrite it")

