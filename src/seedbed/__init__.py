"""seedbed: a laboratory for AI systems that are grown, not crafted."""

__version__ = "0.1.0"
