"""Watch: observers called while a model grows, and emergence detection on what they saw."""

from seedbed.watch.emergence import Emergence, onset, transition
from seedbed.watch.live import Watcher
from seedbed.watch.observers import HeadScores, HeldOutLosses, default_observers, icl_positions, weight_norm

__all__ = ["Emergence", "HeadScores", "HeldOutLosses", "Watcher", "default_observers", "icl_positions", "onset", "transition", "weight_norm"]
