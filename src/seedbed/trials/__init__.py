"""Trials: claims from the literature about grown systems, made testable. Importing this package registers them."""

from seedbed.trials import grokking, induction, interruptibility, mirage, power, proxy_goal, retraining, seeds, supervisor, tiger  # noqa: F401
from seedbed.trials.base import REGISTRY, SCALES, Check, Evidence, Option, Prediction, Trial, get, last_verdicts, register, verdict
from seedbed.trials.runner import run_trial

__all__ = ["REGISTRY", "SCALES", "Check", "Evidence", "Option", "Prediction", "Trial", "get", "last_verdicts", "register", "run_trial", "verdict"]
