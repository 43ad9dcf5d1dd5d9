"""Watching a run while it grows: say at once when a transition completes, and keep
checkpoints dense while one is under way so it can be studied afterwards.

A `Watcher` is a growth listener (see `seedbed.grow.Listener`): after each
observation it reads the watched series back from the run, so it sees exactly what
is stored (also after a resume), and runs the detectors of `emergence` on them.
"""

from __future__ import annotations

import time
from typing import Callable

from seedbed.run import Run
from seedbed.watch.emergence import Emergence, onset, transition

# series to watch: a metric name, or a prefix ending in "/*" meaning "the series under
# this prefix with the highest value now" (e.g. the head that is most induction-like)
# with the smallest change worth announcing (nats for losses; scores run 0..1)
DEFAULT_SERIES = {
    "watch/answer_loss": ("loss on the answer (repeated) tokens", 0.1),
    "watch/icl_score": ("in-context-learning score", 0.1),
    "watch/induction/*": ("induction score of {head}", 0.1),
    "watch/previous_token/*": ("previous-token score of {head}", 0.1),
}
BUDGET = 0.05  # the watcher skips observations to keep its own time under this share of the wall clock


class Watcher:
    def __init__(self, say: Callable[[str], None], series: dict[str, tuple[str, float]] | None = None, budget: float = BUDGET) -> None:
        self.say, self.series, self.budget = say, dict(series or DEFAULT_SERIES), budget
        self.announced: dict[str, list[Emergence]] = {pattern: [] for pattern in self.series}
        self.started = time.perf_counter()
        self.spent = 0.0

    def __call__(self, run: Run, step: int, observed: dict[str, float]) -> list[int]:
        if self.spent > self.budget * (time.perf_counter() - self.started):
            return []
        t0 = time.perf_counter()
        keep: list[int] = []
        for pattern, (label, min_size) in self.series.items():
            name = _resolve(pattern, observed)
            if name is None:
                continue
            history = run.metric(name)
            steps, values = [s for s, _ in history], [v for _, v in history]
            found = transition(name, steps, values)
            announced = self.announced[pattern]
            if found is not None and abs(found.size) >= min_size and self._complete(found, steps) and not _overlaps(found, announced):
                announced.append(found)
                line = found.line(label.format(head=name.rsplit("/", 1)[-1]))
                run.log_event(step, "emergence", line)
                self.say(f"[bold magenta]step {step:,}[/] — {line}")
                continue
            # only what came after the transitions already announced can be under way (on the whole
            # series, one change point placed around a finished transition lands anywhere before it)
            since = max((e.end for e in announced), default=steps[0] if steps else 0)
            after = [(s, v) for s, v in zip(steps, values) if s >= since]
            began = onset(name, [s for s, _ in after], [v for _, v in after])
            if began is not None:
                keep += [s for s in steps if s >= began]  # under way: keep a checkpoint at every observation
        self.spent += time.perf_counter() - t0
        return keep

    @staticmethod
    def _complete(e: Emergence, steps: list[int]) -> bool:
        """Over, as far as anyone can tell: the series has gone on past the window for at
        least the window's length, and for at least 3 observations."""
        return steps[-1] - e.end >= e.end - e.start and sum(s > e.end for s in steps) >= 3


def _overlaps(e: Emergence, others: list[Emergence]) -> bool:
    return any(a.start <= e.end and e.start <= a.end for a in others)


def _resolve(pattern: str, observed: dict[str, float]) -> str | None:
    if not pattern.endswith("/*"):
        return pattern if pattern in observed else None
    prefix = pattern[:-1]
    candidates = {k: v for k, v in observed.items() if k.startswith(prefix)}
    return max(candidates, key=candidates.get) if candidates else None  # type: ignore[arg-type]
