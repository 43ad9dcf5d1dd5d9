"""Read: interpretability on any grown checkpoint.

Load a model (`load`), look inside it (`seedbed.hooks`: `run_with_cache`,
`run_with_hooks`, `hooks`), intervene (`ablate`, `activation_patching`,
`attribution_patching`), attribute (`decompose_resid`, `logit_attribution`,
`logit_lens`), score heads (`induction_scores`, …, `composition_scores`) and probe
(`train_probe`, `probe_hook`). docs/read.md walks through all of it.

In a notebook, `load`'s model, `read_heads`, `attention_pattern` and `patching_result`
show themselves as inline HTML. `read_heads` and `attention_pattern` load matplotlib,
so they are imported when first used, keeping `import seedbed.read` as light as it was.
"""

import importlib

from seedbed.hooks import hooks, run_with_cache, run_with_hooks
from seedbed.read.ablate import MLP, Head, Neuron, ablate, ablated, ablation_hooks, loss_after_ablation
from seedbed.read.attribution import (
    Components,
    LogitLens,
    apply_ln_to_stack,
    attribution_cache,
    component_logits,
    decompose_resid,
    logit_attribution,
    logit_lens,
)
from seedbed.read.load import Grown, checkpoint_steps, load
from seedbed.read.patching import (
    PatchingResult,
    activation_patching,
    attribution_patching,
    patching_result,
)
from seedbed.read.probes import ProbeResult, auroc, probe_acts, probe_hook, train_probe
from seedbed.read.scores import (
    composition_baseline,
    composition_scores,
    copying_scores,
    duplicate_token_scores,
    induction_scores,
    pattern_scores,
    previous_token_scores,
    random_tokens,
    repeated_tokens,
)

_LAZY = {"AttentionPattern": "seedbed.read.attention", "attention_pattern": "seedbed.read.attention",
         "HeadReading": "seedbed.read.summary", "read_heads": "seedbed.read.summary"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'seedbed.read' has no attribute '{name}'")


__all__ = [
    "MLP", "AttentionPattern", "Components", "Grown", "Head", "HeadReading", "LogitLens", "Neuron", "PatchingResult", "ProbeResult",
    "ablate", "ablated", "ablation_hooks", "activation_patching", "apply_ln_to_stack", "attention_pattern", "attribution_cache",
    "attribution_patching", "auroc", "checkpoint_steps", "component_logits", "composition_baseline",
    "composition_scores", "copying_scores", "decompose_resid", "duplicate_token_scores", "hooks",
    "induction_scores", "load", "logit_attribution", "loss_after_ablation", "logit_lens", "patching_result", "pattern_scores", "previous_token_scores",
    "probe_acts", "probe_hook", "random_tokens", "read_heads", "repeated_tokens", "run_with_cache", "run_with_hooks", "train_probe",
]
