"""Hook points: named places in the model where people can look, or change what flows.

Names follow TransformerLens (`blocks.0.attn.hook_pattern`, `hook_resid_pre`, …) so
that what people already know carries over. A hook is `fn(tensor, hook) -> tensor | None`;
returning a tensor replaces the activation.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Union

import torch
from torch import Tensor, nn

from seedbed.errors import SeedbedError
from seedbed.memory import keep_freed_memory

HookFn = Callable[[Tensor, "HookPoint"], Union[Tensor, None]]
NameFilter = Union[str, Iterable[str], Callable[[str], bool], None]


class HookPoint(nn.Module):
    """An identity with a name, that calls its hooks when it has any.

    `__call__` is overridden (skipping nn.Module's dispatch) so that an unused hook
    point costs one attribute lookup and nothing else.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.fns: list[HookFn] = []

    def __call__(self, x: Tensor) -> Tensor:  # type: ignore[override]
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x

    def extra_repr(self) -> str:
        return self.name


def name_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint its dotted name; returns them by name, in forward order."""
    points = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def select(points: dict[str, HookPoint], names: NameFilter) -> list[str]:
    """Names chosen by a name, a list of names, a predicate, or None (= all).

    An unknown name is an error that lists the nearest valid names.
    """
    if names is None:
        return list(points)
    if callable(names):
        return [n for n in points if names(n)]
    wanted = [names] if isinstance(names, str) else list(names)
    for n in wanted:
        if n not in points:
            near = difflib.get_close_matches(n, list(points), n=4, cutoff=0.5)
            hint = ", ".join(near) if near else ", ".join(list(points)[:4]) + ", …"
            raise SeedbedError(f"no hook point named '{n}': nearest valid names are {hint}")
    return wanted


@contextmanager
def hooks(model: nn.Module, fwd_hooks: list[tuple[NameFilter, HookFn]]) -> Iterator[nn.Module]:
    """Attach hooks for the duration of a `with` block; they are removed even on error."""
    points: dict[str, HookPoint] = model.hook_points  # type: ignore[assignment]
    added: list[tuple[HookPoint, HookFn]] = []
    try:
        for names, fn in fwd_hooks:
            for n in select(points, names):
                points[n].fns.append(fn)
                added.append((points[n], fn))
        yield model
    finally:
        for point, fn in added:
            point.fns.remove(fn)


_attached = hooks  # run_with_hooks's argument is called `hooks`, as in TransformerLens


def run_with_hooks(model: nn.Module, tokens: Tensor, hooks: list[tuple[NameFilter, HookFn]]) -> Tensor:
    """One forward pass with `hooks` = [(names, fn), …] attached, then detached."""
    with _attached(model, hooks):
        return model(tokens)


def run_with_cache(model: nn.Module, tokens: Tensor, names: NameFilter = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the activations at the chosen hook points (all of them by default).

    Only what is asked for is kept; asking for attention scores or patterns makes
    the model take its explicit attention path, and only in the layers asked about.
    """
    keep_freed_memory()  # a cache holds many activations at once: reuse their memory between calls
    cache: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: HookPoint) -> None:
        cache[hook.name] = x  # under no_grad: nothing to detach, so nothing is copied

    with torch.no_grad():
        logits = run_with_hooks(model, tokens, [(names, keep)])
    return logits, cache
