"""Fuzz the conditions: ~200 seeded mutations of the examples, each grown through `seedbed grow`.

Every case must end in exit 0, or in exit 2 with exactly one line on stderr; never a
traceback, a hang, or a half-made run (a run folder without its step-0 checkpoint).

The mutations: deleted keys and tables, wrong types (string, bool, list, table where
a value was), zero, negative, huge and non-finite numbers, odd strings, unknown keys
and tables, invalid UTF-8 bytes and truncated files. Valid cases grow STEP_CAP steps
(the examples are small already); a case that asks for a long run (a huge `steps`,
or a deleted one that falls back to the default) is grown in a subprocess and
stopped with Ctrl-C once its step-0 checkpoint is on disk, which must end in exit
130 as cleanly. Most cases run in this process through `seedbed.cli.main`, with an
alarm as the hang detector; a few also run as real subprocesses. Memory is capped
(an address-space limit, and SEEDBED_MEMORY_BYTES for the size check) so that a bug
cannot take the machine down with it.
"""

from __future__ import annotations

import copy
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from conftest import TINY

from seedbed import budget, cli
from seedbed import conditions as conditions_module

SEED = 20250611  # fixed: the same 200 cases every time
N_CASES = 200
N_SUBPROCESS = 6  # cases also run as a real `python -m seedbed` process
STEP_CAP = 3
HANG_S = 90  # a case taking longer than this (on a loaded 2-core machine) is a hang
MEMORY = 4 * 10**9  # what seedbed is told the machine has
ADDRESS_SPACE = 6 * 2**30  # the hard stop for this process's address space while fuzzing

EXAMPLES = Path(__file__).parent.parent / "examples"
NUMBERS = [0, -1, 10**9, 10**18, 2**64, 1e9, 1e18, -0.5, 0.5, float("nan"), float("inf"), float("-inf")]
STRINGS = ["", "cuda", "../../outside", "a\nb", "seedbed 🌱", "x" * 5000, "nul\0byte", "text"]
BAD_BYTES = [b"\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\xfe\xfe"]
FIXED = [  # cases named in issue 11, added to the random ones
    {"schedule.steps": 10**18},  # valid: grows until stopped, allocating nothing per step of the schedule
    {"schedule.steps": 2**63 - 1, "checkpoints.every": 1},
    {"architecture.n_layers": 10**8},
    {"base": "modular-addition", "soil.p": 10**9},
    {"base": "modular-addition", "soil.p": 2**63},
    {"optimizer.lr": 1e12},
]
CORPUS = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 300


# ── the cases ────────────────────────────────────────────────────────────────
@dataclass
class Case:
    index: int
    what: str  # the mutation, in words
    data: bytes  # the conditions file
    long: bool = False  # valid and asking for a long run: grown in a subprocess and stopped


def bases(corpus: Path) -> list[tuple[str, dict]]:
    """The examples (the text one on a local corpus, so nothing is fetched) and the tests' TINY, STEP_CAP steps each."""
    out = [("tiny", copy.deepcopy(TINY))]
    for f in sorted(EXAMPLES.glob("*.toml")):
        doc = tomllib.loads(f.read_text())
        if doc.get("soil", {}).get("kind") == "text":
            doc["soil"] = {"kind": "text", "paths": [str(corpus)]}
        out.append((f.stem, doc))
    for _, doc in out:
        sched = doc.setdefault("schedule", {})
        sched["steps"] = min(sched.get("steps", STEP_CAP), STEP_CAP)
        sched["eval_batches"] = min(sched.get("eval_batches", 2), 2)
    return out


def paths(doc: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path in `doc`, tables included."""
    out = []
    for k, v in doc.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += paths(v, prefix + (k,))
    return out


def table(doc: dict, path: tuple) -> dict:
    for k in path:
        doc = doc[k]
    return doc


def parent(doc: dict, path: tuple) -> dict:
    return table(doc, path[:-1])


def mutate(rng: random.Random, doc: dict) -> str:
    """Change `doc` in place in one way; returns what was done."""
    every = paths(doc)
    leaves = [p for p in every if not isinstance(parent(doc, p)[p[-1]], dict)]
    numbers = [p for p in leaves if type(parent(doc, p)[p[-1]]) in (int, float)]
    strings = [p for p in leaves if isinstance(parent(doc, p)[p[-1]], str)]
    kind = rng.choice(["delete", "type", "number", "number", "number", "string", "unknown"])
    if kind == "number" and numbers:
        p = rng.choice(numbers)
        parent(doc, p)[p[-1]] = value = rng.choice(NUMBERS)
        return f"{'.'.join(p)} = {value!r}"
    if kind == "string" and strings:
        p = rng.choice(strings)
        parent(doc, p)[p[-1]] = value = rng.choice(STRINGS)
        return f"{'.'.join(p)} = {value[:20]!r}"
    if kind == "type" and leaves:
        p = rng.choice(leaves)
        old = parent(doc, p)[p[-1]]
        value = rng.choice([str(old), "3", True, False, [old], {"x": old}])
        parent(doc, p)[p[-1]] = value
        return f"{'.'.join(p)} = {value!r} (was {old!r})"
    if kind == "unknown":
        tables = [()] + [p for p in every if isinstance(parent(doc, p)[p[-1]], dict)]
        where = rng.choice(tables)
        key, value = rng.choice([("colour", 1), ("garden", {"x": 1}), ("Seed", 0), ("a\nb", "c")])
        table(doc, where)[key] = value
        return f"unknown {'.'.join(where + (key,))!r} = {value!r}"
    p = rng.choice(every)
    del parent(doc, p)[p[-1]]
    return f"deleted {'.'.join(p)}"


def serialise(doc: dict) -> bytes:
    """TOML with [schedule] as the first table, so that a truncated file keeps its step cap when it parses."""
    first = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    if isinstance(doc.get("schedule"), dict):
        first["schedule"] = doc["schedule"]
    return tomli_w.dumps({**first, **doc}).encode()


def make_cases(corpus: Path) -> list[Case]:
    rng = random.Random(SEED)
    starts = bases(corpus)
    cases = []
    for i in range(N_CASES):
        name, doc = copy.deepcopy(rng.choice(starts))
        roll = rng.random()
        if roll < 0.08:  # invalid UTF-8 somewhere in the file
            data = serialise(doc)
            at, bad = rng.randrange(len(data) + 1), rng.choice(BAD_BYTES)
            cases.append(Case(i, f"{name}: {bad!r} inserted at byte {at}", data[:at] + bad + data[at:]))
            continue
        if roll < 0.16:  # a file cut short
            data = serialise(doc)
            at = rng.randrange(len(data))
            cases.append(Case(i, f"{name}: cut at byte {at} of {len(data)}", data[:at]))
            continue
        what = [mutate(rng, doc) for _ in range(2 if roll > 0.85 else 1)]
        cases.append(Case(i, f"{name}: {'; '.join(what)}", serialise(doc)))
    for over in FIXED:  # the issue's own examples, whatever the dice say
        name, doc = copy.deepcopy(next(b for b in starts if b[0] == over.get("base", "tiny")))
        for dotted, value in over.items():
            if dotted != "base":
                *where, key = dotted.split(".")
                table(doc, tuple(where))[key] = value
        cases.append(Case(len(cases), f"{name}: {over}", serialise(doc)))
    for case in cases:
        case.long = asks_for_a_long_run(case.data)
    return cases


def asks_for_a_long_run(data: bytes) -> bool:
    """Valid conditions whose growth takes more than a few seconds (only this routes a case; it judges nothing)."""
    try:
        c = conditions_module.parse(tomllib.loads(data.decode()))
    except Exception:  # noqa: BLE001 - invalid in any way: the CLI must say so, in-process
        return False
    return c.schedule.steps > 10 * STEP_CAP or c.schedule.eval_batches > 100


# ── running one ──────────────────────────────────────────────────────────────
@dataclass
class Outcome:
    code: int | None  # None: it never ended
    stderr: str
    crash: str = ""  # an exception that escaped the CLI, or "hang"


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in seedbed swallows it."""


def on_alarm(signum, frame):
    raise Hang


def grow_in_process(args: list[str], capsys) -> Outcome:
    capsys.readouterr()
    code, crash = 0, ""
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HANG_S)
    try:
        cli.main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Hang:
        code, crash = None, f"hang: still running after {HANG_S} s"
    except BaseException as e:  # noqa: BLE001 - a traceback is what we are looking for
        code, crash = 1, f"traceback: {type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(code, capsys.readouterr().err, crash)


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, resource.getrlimit(resource.RLIMIT_AS)[1]))


def grow_in_subprocess(args: list[str], cwd: Path, stop_after_step0: bool) -> Outcome:
    """`python -m seedbed ARGS`; with `stop_after_step0`, Ctrl-C once the step-0 checkpoint exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "seedbed", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=limit_memory,  # noqa: PLW1509 - only sets a limit before exec
    )
    runs = Path(args[args.index("--runs-dir") + 1])
    deadline = time.monotonic() + HANG_S
    while stop_after_step0 and proc.poll() is None and time.monotonic() < deadline:
        if list(runs.glob("*/checkpoints/step-000000.safetensors")):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    try:
        _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 5))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return Outcome(None, err.decode(errors="replace"), f"hang: still running after {HANG_S} s")
    return Outcome(proc.returncode, err.decode(errors="replace"))


def problems(out: Outcome, runs: Path, allowed: tuple[int, ...] = (0, 2)) -> list[str]:
    """What is wrong with how a case ended (nothing, if it ended well)."""
    found = [out.crash] if out.crash else []
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    if out.code not in allowed and not out.crash:
        found.append(f"exit {out.code}")
    if "Traceback" in out.stderr:
        found.append("a traceback on stderr")
    elif out.code == 2 and len(lines) != 1:
        found.append(f"exit 2 with {len(lines)} stderr lines")
    if out.code != 0 and runs.is_dir():
        for folder in runs.iterdir():
            if not (folder / "checkpoints" / "step-000000.safetensors").is_file():
                found.append(f"half-made run {folder.name!r} left behind")
    return found


# ── the test ─────────────────────────────────────────────────────────────────
@pytest.fixture
def fuzz_env(tmp_path, monkeypatch):
    """Small memory as seedbed sees it, a private cache, and an address-space cap while fuzzing."""
    monkeypatch.setenv(budget.MEMORY_ENV, str(MEMORY))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, hard))
    yield tmp_path
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_the_cases_are_fixed_and_varied(tmp_path):
    """The generator is seeded (same cases every run) and reaches every kind of mutation."""
    one, two = make_cases(tmp_path / "c.txt"), make_cases(tmp_path / "c.txt")
    assert [c.data for c in one] == [c.data for c in two] and len(one) == N_CASES + len(FIXED)
    words = " ".join(c.what for c in one)
    for kind in ("deleted", "unknown", "inserted at byte", "cut at byte", "nan", "inf", "18446744073709551616", "(was"):
        assert kind in words, kind
    assert any(c.long for c in one) and sum(not c.long for c in one) > N_CASES // 2


@pytest.mark.slow
def test_fuzzed_conditions_end_in_one_line_or_a_run(fuzz_env, capsys):
    corpus = fuzz_env / "corpus.txt"
    corpus.write_text(CORPUS)
    cases = make_cases(corpus)
    sub = set(random.Random(SEED + 1).sample([c.index for c in cases if not c.long], N_SUBPROCESS))
    failures, codes = [], {}
    for case in cases:
        folder = fuzz_env / f"case{case.index:03d}"
        folder.mkdir()
        path = folder / "conditions.toml"
        path.write_bytes(case.data)
        runs = folder / "runs"
        args = ["grow", str(path), "--runs-dir", str(runs), "--no-progress"]
        if case.long:
            outcomes = [("subprocess, Ctrl-C after step 0", grow_in_subprocess(args, folder, True), (0, 2, 130))]
        else:
            outcomes = [("in-process", grow_in_process(args, capsys), (0, 2))]
            if case.index in sub:
                shutil.rmtree(runs, ignore_errors=True)
                outcomes.append(("subprocess", grow_in_subprocess(args, folder, False), (0, 2)))
        for how, out, allowed in outcomes:
            codes[out.code] = codes.get(out.code, 0) + 1
            wrong = problems(out, runs, allowed)
            if wrong:
                tail = " | ".join(out.stderr.strip().splitlines()[-3:])[:400]
                failures.append(f"case {case.index} ({how}) {case.what}: {', '.join(wrong)}; stderr: {tail}")
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nfuzz: {len(cases)} cases, exit codes {codes}, {len(failures)} failures")
    assert not failures, "\n".join(failures)
