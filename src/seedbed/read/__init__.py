"""Read: interpretability on any grown checkpoint."""

from seedbed.read.load import Grown, checkpoint_steps, load

__all__ = ["Grown", "checkpoint_steps", "load"]
