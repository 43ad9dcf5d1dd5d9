"""Shared helpers: tiny conditions that grow in seconds, and a way to call the CLI."""

from __future__ import annotations

import ast
import atexit
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w

from seedbed.conditions import Conditions, parse

# Text soils cache their token maps under $XDG_CACHE_HOME/seedbed: the tests (and the commands they run) use a
# folder of their own, never the user's cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="seedbed-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

TINY = {
    "name": "tiny",
    "seed": 0,
    "soil": {"kind": "repeated-blocks", "vocab_size": 16, "block_min": 2, "block_max": 6, "prefix_max": 4},
    "architecture": {"n_layers": 2, "d_model": 16, "n_heads": 2, "n_ctx": 16, "attn_only": True},
    "optimizer": {"lr": 3e-3},
    "schedule": {"steps": 40, "batch_size": 8, "warmup_steps": 5, "eval_every": 10, "eval_batches": 2},
    "checkpoints": {"log_until": 8, "every": 10},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_dict(**over) -> dict:
    return merge(TINY, over)


def tiny(**over) -> Conditions:
    return parse(tiny_dict(**over))


def write_toml(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m seedbed ARGS` as a user would, in `cwd`."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "seedbed", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


RUNS_PROGRAMS = {"subprocess", "pty", "multiprocessing", "runpy", "code", "ctypes", "importlib", "webbrowser",
                 "socket", "urllib", "http", "requests", "shutil", "pickle"}


def assert_runs_no_programs(source: Path, also_banned: set[str] = frozenset()) -> None:
    """The module at `source` imports nothing that runs programs, evaluates text or reaches the network, and calls
    no function that would: what a model writes must stay text (chat, the tiger's loop)."""
    banned_modules = RUNS_PROGRAMS | set(also_banned)
    banned_builtins = {"eval", "exec", "compile", "__import__", "open", "breakpoint"}
    programs = r"(system|popen|startfile|fork|forkpty|exec[lv]?p?e?|spawn\w*|posix_spawn\w*|call|check_output|run)$"
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned_modules, ast.unparse(node)
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned_modules, ast.unparse(node)
        if isinstance(node, ast.Call):
            f = node.func
            assert not (isinstance(f, ast.Name) and f.id in banned_builtins), ast.unparse(node)
            assert not (isinstance(f, ast.Attribute) and re.match(programs, f.attr)), ast.unparse(node)
