"""Trials: claims from the literature about grown systems, made testable. Importing this package registers them."""

from seedbed.trials import grokking, induction, mirage, seeds  # noqa: F401
from seedbed.trials.base import REGISTRY, SCALES, Check, Evidence, Prediction, Trial, get, last_verdicts, register, run_trial, verdict

__all__ = ["REGISTRY", "SCALES", "Check", "Evidence", "Prediction", "Trial", "get", "last_verdicts", "register", "run_trial", "verdict"]
